"""kpatchbuild: from a kernel source patch to a livepatch module, as a make-style graph.

Data flows one way: recipe -> target -> original stage -> patched objects -> per-object diff
-> module -> proof in a VM. Each stage is one module of this package.
"""

__version__ = "0.1.0"
