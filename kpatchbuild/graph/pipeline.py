"""One recipe on one kernel target: its steps, and the small records that link them.

Per recipe and kernel target, the flow of the package, one call per step:

    fetch -> config -> original (prepare a Debian tree | build a kernel) -> patches
    -> patched -> diff_object (each changed object) -> diff -> module -> prove

Each method is named as its stage's folder under ``kpatchbuild/stages``, its doit task, its
record and its log are.

Each step records its result in a small JSON or text file under
``<cache>/work/<recipe>/<target>/``; a later step reads only those records, and the heavy
artifacts they point to live in the content-addressed store, so two recipes on the same
kernel share one original stage. Nothing here knows doit: ``tasks.py`` turns the steps
into tasks, with these records as their targets and dependencies.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from kpatchbuild.base import modsig
from kpatchbuild.base.commands import say
from kpatchbuild.base.errors import BuildError, KpbError, RecipeError, about
from kpatchbuild.base.store import (
    PROJECT_ROOT,
    Store,
    content_key,
    file_hash,
    write_atomically,
)
from kpatchbuild.differ import CannotPatch
from kpatchbuild.graph.recipe import ConfigOption, KernelTarget, Recipe, find_recipes
from kpatchbuild.graph.records import (
    DiffRecord,
    FetchRecord,
    ModuleRecord,
    ObjectDiffRecord,
    OriginalRecord,
    PatchedRecord,
    PatchesRecord,
    ProveRecord,
    read_record,
    write_record,
)
from kpatchbuild.stages.buildroot import buildroot
from kpatchbuild.stages.config import kconfig
from kpatchbuild.stages.diff import objdiff
from kpatchbuild.stages.diff.objdiff import SymbolFiles
from kpatchbuild.stages.fetch import debian, source, target_modules
from kpatchbuild.stages.fetch.source import SourceTree
from kpatchbuild.stages.fetch.suites import DebianRelease, debian_release
from kpatchbuild.stages.fetch.target_modules import BuiltModules, DebianModules
from kpatchbuild.stages.module import buildid, module, sign
from kpatchbuild.stages.original import original
from kpatchbuild.stages.original.original import OriginalStage
from kpatchbuild.stages.patched import patched
from kpatchbuild.stages.patched.patched import ObjectPair
from kpatchbuild.stages.patches import patching
from kpatchbuild.stages.prove import vm

RECIPES_ENV = "KPATCHBUILD_RECIPES"
# How a kernel that does not force signatures is made to (the proof of a signed module).
ENFORCED_SIGNATURES = "module.sig_enforce=1"


@dataclass(frozen=True)
class TargetPipeline:
    """The steps of one recipe on one kernel target, and the files that link them."""

    store: Store
    recipe: Recipe
    target: KernelTarget
    signing: sign.SigningKey | None = None  # who signs the module; None: unsigned

    @property
    def label(self) -> str:
        return f"{self.recipe.name}/{self.target.name}"

    @property
    def last_step(self) -> str:
        """Where the cell's steps end: a target the change does not apply to stops once its
        patches are seen not to apply; any other is proven."""
        return "patches" if self.target.not_applicable is not None else "prove"

    @property
    def work(self) -> Path:
        return self.store.root / "work" / self.recipe.name / self.target.name

    @property
    def fetch_record(self) -> Path:
        return self.work / "fetch.json"

    @property
    def config_file(self) -> Path:
        return self.work / "config"

    @property
    def original_record(self) -> Path:
        return self.work / "original.json"

    @property
    def patches_record(self) -> Path:
        return self.work / "patches.json"

    @property
    def patched_record(self) -> Path:
        return self.work / "patched.json"

    @property
    def diff_record(self) -> Path:
        return self.work / "diff.json"

    @property
    def module_record(self) -> Path:
        return self.work / "module.json"

    @property
    def prove_record(self) -> Path:
        return self.work / "prove.json"

    @property
    def patched_log(self) -> Path:
        return self.store.log_path(f"patched-{self.recipe.name}-{self.target.name}")

    def fetched(self) -> FetchRecord:
        return read_record(self.fetch_record, FetchRecord)

    def original_made(self) -> OriginalRecord:
        return read_record(self.original_record, OriginalRecord)

    def diffs(self) -> DiffRecord:
        return read_record(self.diff_record, DiffRecord)

    def linked(self) -> ModuleRecord:
        return read_record(self.module_record, ModuleRecord)

    def source_tree(self) -> SourceTree:
        return self.fetched().source

    # --- fetch ---

    def fetch(self) -> None:
        if self.target.debian:
            kernel = debian.resolve_release(self.target.debian, self.store)
            # Both mostly wait on dpkg-deb, xz and the disk: unpack the source meanwhile.
            with ThreadPoolExecutor(max_workers=1) as pool:
                files_job = pool.submit(debian.kernel_files, self.store, kernel)
                tree = source.debian_source_tree(self.store, kernel.packages["source"])
                files = files_job.result()
            before = self._fetched_release()
            moved = before if before not in (None, kernel.release) else None
            record = FetchRecord("debian", tree, kernel, files.path, previous_release=moved)
        else:
            assert self.target.source is not None
            tree = source.obtain_source(self.store, self.target.source,
                                        f"{self.target.place}.source")
            record = FetchRecord("built", tree)
        write_record(self.fetch_record, record)

    def _fetched_release(self) -> str | None:
        """The kernel release the last fetch found, if there is a readable record of it."""
        try:
            kernel = self.fetched().kernel if self.fetch_record.is_file() else None
        except KpbError:
            return None
        return kernel.release if kernel else None

    def fetch_stale(self) -> str | None:
        """Why fetch must run again although no file it depends on changed (Debian moved on,
        a local tree changed, the fetched files are gone), or None when what it fetched holds."""
        if not self.fetch_record.is_file():
            return "not fetched yet"
        try:
            record = self.fetched()
        except KpbError as error:
            return error.message
        if not record.source.path.is_dir():
            return f"its source tree {record.source.path} is gone from the cache"
        if self.target.debian and not (record.debian_files() / debian.VMLINUX_SYMBOLS).is_file():
            return "fetched before vmlinux's symbol table was kept"
        try:
            if self.target.debian and not self.target.debian.image:
                release, version = debian.newest_release_known(self.target.debian, self.store)
                assert record.kernel is not None
                known = record.kernel.release, record.kernel.version
                if (release, version) != known:
                    return (f"Debian moved on: {release} ({version}), fetched was {known[0]} "
                            f"({known[1]})")
            spec = self.target.source
            if spec and spec.kind == "tree":
                assert spec.path is not None
                if source.tree_fingerprint(spec.path) != record.source.key:
                    return f"the source tree {spec.path} changed"
            if spec and spec.kind == "debian" and not spec.version:
                assert spec.package is not None and spec.release is not None
                newest = debian.newest_version_known(spec.package, self.store, spec.release)
                if newest != record.source.origin["version"]:
                    return f"Debian moved on: {spec.package} {newest}"
        except KpbError:
            return None  # offline or index gone: keep what was fetched
        return None

    # --- config ---

    def config(self) -> None:
        record = self.fetched()
        if record.kind == "debian":
            text = (record.debian_files() / "config").read_text()
            original.check_livepatch_config(text, self.label)
            # The kernel's exact compiler: the host's, or a build root made now if needed.
            self.say_toolchain(self.toolchain(text))
        else:
            assert self.target.config is not None
            log = self.store.log_path(f"config-{self.recipe.name}-{self.target.name}")
            log.unlink(missing_ok=True)
            scratch = self.store.tmp / f"config-{os.getpid()}"
            # kconfig records the compiler that will build the kernel: its toolchain's. It
            # reads the source where it is (a recipe's `tree:` may be outside the store).
            srctree = self.source_tree().path
            toolchain = buildroot.suite_toolchain(self.store, self.toolchain_release(),
                                                  where=self.label,
                                                  binds=(*self.binds(), srctree))
            self.say_toolchain(toolchain)
            spec = self.target.config
            if self.target.trusts_signing_key:
                spec = replace(spec, options=(*spec.options, *self.trusted_key_options()))
            try:
                text = kconfig.make_config(srctree, spec, scratch, log, runner=toolchain.runner)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        write_atomically(self.config_file, text)

    def trusted_key_options(self) -> tuple[ConfigOption, ...]:
        """What makes the kernel built here trust the signing key, and check signatures:
        its certificate (PEM, in the store under its hash, so that another certificate is
        another config) in CONFIG_SYSTEM_TRUSTED_KEYS, and what checking needs."""
        assert self.signing is not None, "a target that trusts the signing key has one"
        certificate = sign.made(self.signing).checked()

        def write(work: Path) -> None:
            (work / "certificate.pem").write_bytes(certificate.pem())

        stored = self.store.make("trustedcert", certificate.sha256,
                                 {"signer": certificate.signer}, write)
        place = replace(self.target.place, key=f"{self.target.place.key}.trust_signing_key")
        # Debian's kernel looks up each validly signed module's sha256 in its blocklist
        # (kernel/module/signing.c): without sha256 the load fails with ENOENT.
        return (ConfigOption("CONFIG_MODULE_SIG", "y", place),
                ConfigOption("CONFIG_CRYPTO_SHA256", "y", place),
                ConfigOption("CONFIG_SYSTEM_TRUSTED_KEYRING", "y", place),
                ConfigOption("CONFIG_SYSTEM_TRUSTED_KEYS",
                             f'"{stored.path / "certificate.pem"}"', place))

    def say_toolchain(self, toolchain: buildroot.Toolchain) -> None:
        say(f"  {self.label}: compiled with '{toolchain.compiler.text}' in {toolchain.runner.name}")
        if toolchain.override:
            say(f"  {self.label}: NOTE {toolchain.override}")

    def config_deps(self) -> list[str]:
        deps = [str(self.recipe.path), str(self.fetch_record)]
        if self.target.config:
            deps += [str(p) for p in self.target.config.fragments]
            if self.target.config.base_path:
                deps.append(str(self.target.config.base_path))
        return deps

    def toolchain(self, config_text: str | None = None) -> buildroot.Toolchain:
        """Where this target compiles, with the exact compiler its config names (the
        host's gcc when it is that one, else its release's build root, seeing the store,
        the project and the recipe): a Debian kernel's own, or for a kernel built here the
        gcc of its toolchain's release that configured it."""
        text = config_text if config_text is not None else self.config_file.read_text()
        return buildroot.toolchain_for(self.store, text, self.toolchain_release(),
                                       where=self.label, binds=self.binds(),
                                       accept=self.target.accept_compiler)

    def toolchain_release(self) -> DebianRelease:
        """The Debian release whose gcc compiles this target."""
        number = self.target.debian.release if self.target.debian else self.target.toolchain
        assert number is not None
        return debian_release(number, self.label)

    def binds(self) -> tuple[Path, ...]:
        """What a build root must see: the store, the project and the recipe, the cell."""
        return (self.store.root, PROJECT_ROOT, self.recipe.directory, self.work)

    def workspace(self) -> patched.Workspace:
        """The original stage's compile workspace, compiling with the target's toolchain
        (a tree prepared by one compiler must never meet another: kbuild would reconfigure
        it over and over)."""
        return patched.Workspace(self.store, self.stage(), self.toolchain().runner)

    # --- original stage ---

    def original(self) -> None:
        record = self.fetched()
        config_text = self.config_file.read_text()
        tree = record.source
        toolchain = self.toolchain(config_text)
        if record.kind == "debian":
            assert record.kernel is not None
            files = record.debian_files()
            stage = original.prepare_debian_tree(
                self.store, tree, config_text, record.kernel.release,
                files / "Module.symvers", label=self.label.replace("/", "-"),
                toolchain=toolchain,
            )
        else:
            stage = original.build_kernel(self.store, tree, config_text,
                                          label=self.label.replace("/", "-"),
                                          toolchain=toolchain)
        write_record(self.original_record,
                     OriginalRecord(stage.kind, stage.key, stage.path, stage.release,
                                    toolchain.compiler.text, toolchain.override))
        say(f"  {self.label}: original stage {stage.release} at {stage.tree}")

    def original_gone(self) -> str | None:
        """Why the original stage must be made again although its inputs did not change."""
        if not self.original_record.is_file():
            return "not made yet"
        try:
            path = self.original_made().path
        except KpbError as error:
            return error.message
        if not (path / "manifest.json").is_file():
            return f"the stage {path} is gone from the cache"
        return None

    # --- patches ---

    def stage(self) -> OriginalStage:
        """The original stage the record names, as its manifest in the store describes it."""
        record = self.original_made()
        artifact = self.store.lookup(original.STORE_KIND, record.key)
        if artifact is None:
            raise BuildError(f"{self.label}: its original stage {record.path} is no longer "
                             "in the cache; run the build again to make it")
        return OriginalStage.from_artifact(artifact)

    @property
    def patch_files(self) -> tuple[Path, ...]:
        """The target's own patches, or the recipe's."""
        return self.recipe.patches_for(self.target)

    def patches(self) -> None:
        tree = self.original_made().path / "tree"
        names = tuple(str(p) for p in self.patch_files)
        reason = self.target.not_applicable
        try:
            touched = patching.check_patches_apply(self.patch_files, tree, self.recipe.strip)
        except RecipeError as failure:
            if reason is None:
                raise
            say(f"  {self.label}: not applicable, as the recipe says ({reason}): "
                f"{failure.message}")
            write_record(self.patches_record, PatchesRecord(
                names, self.recipe.strip, (), not_applicable=failure.message))
            return
        if reason is not None:
            raise RecipeError(f"{self.target.place}: the recipe marks this target "
                              f"not-applicable ({reason}), but its patches apply; drop "
                              "'expect' to build it")
        write_record(self.patches_record, PatchesRecord(names, self.recipe.strip,
                                                        tuple(touched)))

    # --- patched objects and their diffs ---

    def patched(self) -> None:
        self.patched_log.unlink(missing_ok=True)
        with about(str(self.recipe.path)):
            pairs = patched.build_object_pairs(self.store, self.stage(), self.patch_files,
                                               runner=self.toolchain().runner,
                                               log=self.patched_log,
                                               header_index=self.target.header_index,
                                               strip=self.recipe.strip)
        for pair in pairs:
            if pair.identical:
                say(f"  {pair.object}: no change in the compiled object")
        write_record(self.patched_record, PatchedRecord(tuple(pairs)))

    def target_modules(self) -> DebianModules | BuiltModules:
        """Where this kernel's loadable modules come from: Debian's image, or the build."""
        if self.target.kind == "debian":
            kernel = self.fetched().kernel
            assert kernel is not None
            return DebianModules(self.store, kernel.packages["image"], kernel.release)
        return BuiltModules(self.stage().tree)

    def symbol_files(self, target: str) -> SymbolFiles:
        """What references into ``target`` resolve against: vmlinux's symbol table (the
        compact one from Debian's -dbg package, else System.map), or the module's .ko."""
        if self.target.kind == "debian":
            files = self.fetched().debian_files()
        else:
            files = self.stage().tree
        if target == "vmlinux":
            symbols = files / debian.VMLINUX_SYMBOLS
            if not symbols.is_file():
                symbols = files / "System.map"
            return SymbolFiles(symbols, files / "Module.symvers")
        return SymbolFiles(self.target_modules().find(target), files / "Module.symvers")

    def changed_pairs(self) -> list[ObjectPair]:
        """The rebuilt objects whose bytes differ from the original: one diff task each."""
        if not self.patched_record.is_file():
            return []  # `doit list` before anything was built
        return read_record(self.patched_record, PatchedRecord).changed()

    def object_diff_record(self, obj: str) -> Path:
        return self.work / "diff" / f"{obj}.json"

    def diff_object(self, pair: ObjectPair) -> None:
        """Diff one object; a refusal the recipe expects is recorded, any other one fails."""
        sizes = objdiff.measured_entry_sizes(self.store, self.workspace())
        try:
            if pair.exports_changed:
                raise CannotPatch(pair.object, [pair.exports_changed])
            provided = objdiff.provided_by_others(pair, self.changed_pairs())
            diff = objdiff.diff_pair(self.store, pair, self.symbol_files(pair.target), sizes,
                                     self.stage().release, provided)
        except CannotPatch as refusal:
            expected = self.recipe.refused_on(self.target)
            if not (expected and expected in refusal.message):
                raise
            say(f"  refused, as the recipe expects: {refusal.message}")
            record = ObjectDiffRecord(refused=refusal.message)
        else:
            for line in objdiff.decision_lines(diff):
                say(f"  {line}")
            record = ObjectDiffRecord(diff)
        self.object_diff_record(pair.object).parent.mkdir(parents=True, exist_ok=True)
        write_record(self.object_diff_record(pair.object), record)

    def diff(self) -> None:
        """The target's diffs in one record: what the module links, or the expected refusal.

        A patch that cannot become a module (a refusal, an exported symbol's changed
        version, no functional change) is recorded as refused when the recipe expects it
        with those words, and fails otherwise.
        """
        expected = self.recipe.refused_on(self.target)
        objects = read_record(self.patched_record, PatchedRecord)
        pairs = objects.changed()
        # An object whose code did not change but whose exports' versions did has no diff.
        for pair in objects.objects:
            if pair.identical and pair.exports_changed:
                self._refuse(CannotPatch(pair.object, [pair.exports_changed]).message,
                             expected, exit_code=2)
                return
        if not pairs:
            raise KpbError(f"{self.recipe.path}: the patches change no compiled code "
                           "(every rebuilt object is byte-identical)", exit_code=3)
        records = [read_record(self.object_diff_record(p.object), ObjectDiffRecord)
                   for p in pairs]
        refused = [r.refused for r in records if r.refused is not None]
        if refused:
            write_record(self.diff_record, DiffRecord(refused=refused[0]))
            return
        collected = DiffRecord(tuple(r.diff for r in records if r.diff is not None))
        if not collected.with_code():
            self._refuse("no functional change: the patches change only line numbers or "
                         "nothing the kernel runs", expected, exit_code=3)
            return
        if expected:
            raise KpbError(f"{self.recipe.path}: the recipe expects a refusal containing "
                           f"'{expected}' on {self.target.name}, but the differ accepted "
                           "the change")
        write_record(self.diff_record, collected)

    def _refuse(self, message: str, expected: str | None, *, exit_code: int) -> None:
        """Record ``message`` as the refusal the recipe expects, or fail with it."""
        if not (expected and expected in message):
            raise KpbError(f"{self.recipe.path}: {message}", exit_code=exit_code)
        say(f"  refused, as the recipe expects: {message}")
        write_record(self.diff_record, DiffRecord(refused=message))

    # --- the module and its proof ---

    def kernel_image(self) -> Path:
        """The original kernel to boot: Debian's own vmlinuz, or the bzImage built here."""
        if self.target.kind == "debian":
            return self.fetched().debian_files() / "vmlinuz"
        return self.stage().tree / "arch/x86/boot/bzImage"

    def module(self) -> None:
        refused = self.diffs().refused
        if refused is not None:  # as the recipe expects: nothing to link
            write_record(self.module_record, ModuleRecord(refused=refused))
            return
        records = self.diffs().with_code()
        diffs = [module.ObjectDiff.from_report(d.report, d.output) for d in records
                 if d.output is not None]
        stage = self.stage()
        log = self.store.log_path(f"module-{self.recipe.name}-{self.target.name}")
        key = content_key(
            "module", stage.key, self.recipe.module, self.recipe.replace,
            self.recipe.description, objdiff.differ_version(), file_hash(Path(module.__file__)),
            [(file_hash(d.output), file_hash(d.report)) for d in records if d.output],
            [(p.name, file_hash(p)) for p in self.recipe.sources],
            [(p.name, file_hash(p)) for p in module_inputs()],
        )
        name = f"{self.recipe.module}.ko"
        if not self.store.lookup("module", key):
            log.unlink(missing_ok=True)
            workspace = self.workspace()
            with self.store.publishing("module", key, {"module": name,
                                                       "stage": stage.key}) as work:
                with workspace.locked(), source.no_write_through(
                    workspace.tree, what="linking the module", on_damage=workspace.discard
                ):
                    ko = module.link_module(
                        workspace.tree, self.recipe.module, diffs, self.work / "module",
                        release=stage.release, log=log, replace=self.recipe.replace,
                        build_id=self.kernel_build_id(), sources=self.recipe.sources,
                        description=self.recipe.description, runner=workspace.runner,
                    )
                shutil.copyfile(ko, work / name)
        final = self.work / name
        signature, unsigned = self.cell_module(self.store.path("module", key) / name, final,
                                               log)
        say(f"  module: {final}")
        for diff in diffs:
            for change in diff.changed_functions:
                say(f"    {diff.object_name}: changed function: {change.name}")
            for change in diff.new_functions:
                say(f"    {diff.object_name}: new function: {change.name}")
        say(f"  build log: {log}")
        # The module's hash in its record: a relinked module with new bytes is proven again.
        write_record(self.module_record, ModuleRecord(
            final, stage.release, log, file_hash(final),
            signature=signature.to_json() if signature else None, unsigned=unsigned,
            certificate=self.signing.certificate if signature and self.signing else None))

    def cell_module(self, unsigned: Path, final: Path,
                    log: Path) -> tuple[sign.Signature | None, str | None]:
        """The cell's module at ``final``: ``unsigned`` signed with the cell's key, checked
        against its certificate; else a copy, and why it is unsigned."""
        hash = sign.module_hash(self.config_file)
        if self.signing is None or hash is None:
            partial = final.with_name(f".{final.name}.tmp")
            shutil.copyfile(unsigned, partial)
            os.replace(partial, final)
            if hash is None:
                why = f"unsigned: {self.label}'s kernel checks no module signatures " \
                      "(no CONFIG_MODULE_SIG)"
            else:
                why = sign.UNSIGNED
            say(f"  {why}" + ("" if hash is None or self.signing else
                              f" (name a key: ${sign.KEY_ENV} and ${sign.CERT_ENV})"))
            return None, why
        key = sign.made(self.signing)
        with about(f"{self.label}: signing the module"):
            tool = sign.sign_file_tool(self.store, self.stage().tree)
            signature = sign.sign_module(unsigned, final, key, tool=tool, hash=hash, log=log)
        say(f"  signed by '{signature.signer}' ({signature.hash}) with {key.shown}, "
            f"verified against {key.certificate}")
        return signature, None

    def kernel_build_id(self) -> str:
        """The build id of the kernel the module is for; decompressing vmlinuz once."""
        image = self.kernel_image()
        memory = ("build-id", file_hash(image))
        known = self.store.recall(memory)
        if not known:
            known = buildid.kernel_build_id(image)
            self.store.remember(memory, known)
        return known

    def patched_modules(self) -> list[Path]:
        """The modules the patch changes, with their dependencies, to load before it."""
        targets = sorted({d.target for d in self.diffs().with_code() if d.target != "vmlinux"})
        modules = self.target_modules()
        ordered: list[Path] = []
        for name in targets:
            ordered += [ko for ko in target_modules.with_dependencies(name, modules.find)
                        if ko not in ordered]
        return ordered

    def prove(self) -> None:
        refused = self.linked().refused
        if refused is not None:  # as the recipe expects: nothing to prove
            write_record(self.prove_record, ProveRecord(refused=refused))
            return
        if not self.recipe.check:
            say(f"  {self.label}: the recipe has no 'check': the proof shows the module loads, "
                "transitions, disables and unloads cleanly, not that it fixes anything")
        linked = self.linked()
        ko = linked.linked()
        scratch = Path(tempfile.mkdtemp(prefix="signature-", dir=self.work))
        try:
            copies, proven_signature = self.signature_trials(linked, scratch)
            result = vm.prove_livepatch(
                self.kernel_image(), ko, self.recipe.check, workdir=self.work / "prove",
                preload=self.patched_modules(), network=self.recipe.network, refused=copies,
                kernel_args=ENFORCED_SIGNATURES if copies else "")
            refusals = self.refusal_lines(copies, result)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        exit_line = f"{vm.module_name(ko)}: exit"
        if exit_line not in result.console_log.read_text(errors="replace"):
            raise KpbError(f"{self.label}: the module unloaded but its exit function never ran "
                           f"('{exit_line}' missing): the module's struct module does not match "
                           f"the kernel's; console log: {result.console_log}")
        say(f"  proven in {linked.release} under qemu "
            f"({result.accel}, {result.elapsed:.1f} s): {', '.join(s.name for s in result.steps)}")
        for line in refusals:
            say(f"  refused under {ENFORCED_SIGNATURES}, as it must be: {line}")
        if proven_signature:
            say(f"  signature {proven_signature}")
        say(f"  console log: {result.console_log}")
        write_record(self.prove_record, ProveRecord(
            ko, result.console_log, tuple(s.name for s in result.steps),
            self.recipe.check is not None, result.elapsed, result.accel,
            signature=proven_signature, refusals=refusals))

    def signature_trials(self, linked: ModuleRecord,
                         scratch: Path) -> tuple[list[tuple[str, Path]], str | None]:
        """How the proof shows the signature holds: a kernel built here to trust the key
        boots with module.sig_enforce=1 and must refuse the module unsigned and signed by a
        throwaway key (the copies returned, made in ``scratch``) before it loads the signed
        one; Debian's kernel trusts only Debian's keys and enrolled ones, so there the
        signature is verified offline against its certificate."""
        if linked.signature is None or linked.certificate is None:
            return [], None
        ko = linked.linked()
        named = f"by '{linked.signature['signer']}' ({linked.signature['hash']})"
        if not self.target.trusts_signing_key:
            certificate = sign.read_certificate(linked.certificate, named_by="the module record")
            sign.verify_module(ko, certificate)
            return [], f"{named} verified offline against {linked.certificate}"
        content, _ = modsig.split_signature(ko.read_bytes())
        unsigned = scratch / ko.name
        unsigned.write_bytes(content)
        other = scratch / "other-key" / ko.name
        other.parent.mkdir()
        hash = sign.module_hash(self.config_file)
        assert hash is not None, "a kernel that trusts the signing key checks signatures"
        sign.sign_module(unsigned, other, sign.throwaway_key(scratch), hash=hash,
                         tool=sign.sign_file_tool(self.store, self.stage().tree),
                         log=self.store.log_path(f"prove-{self.recipe.name}-{self.target.name}"))
        return ([("unsigned", unsigned), ("other-key", other)],
                f"{named} checked by the kernel under {ENFORCED_SIGNATURES}")

    @staticmethod
    def refusal_lines(refused: list[tuple[str, Path]], result: vm.ProofResult) -> tuple[str, ...]:
        """Each refused copy as the one line a user reads, with the kernel's own words."""
        said = {step.name: step.detail for step in result.steps}
        lines = []
        for label, path in refused:
            signature = modsig.read_signature(path.read_bytes())
            lines.append(f"{label}: {modsig.refusal_line(vm.module_name(path), signature)} "
                         f"(the kernel: {said.get(vm.refused_step(label), '').strip()})")
        return tuple(lines)


def recipes_dir() -> Path:
    return Path(os.environ.get(RECIPES_ENV) or PROJECT_ROOT / "recipes")


def pipelines(store: Store, only: str | None) -> list[TargetPipeline]:
    """Every recipe's targets (or one recipe's, ``recipe=NAME``), in recipe order."""
    recipes = find_recipes(recipes_dir(), only)
    named = sign.named_key(os.environ)
    return [TargetPipeline(store, recipe, target, signing_key(named, recipe, target))
            for recipe in recipes for target in recipe.targets]


def signing_key(named: sign.SigningKey | None, recipe: Recipe,
                target: KernelTarget) -> sign.SigningKey | None:
    """Who signs a cell's module: the key the command line or environment names, else the
    recipe's, else (for a kernel built here to trust) kpatchbuild's development key."""
    if named is not None:
        return named
    if recipe.signing is not None:
        return sign.SigningKey(recipe.signing.key, recipe.signing.certificate,
                               str(recipe.signing.place))
    if target.trusts_signing_key:
        return sign.development_key()
    return None


def module_inputs() -> list[Path]:
    """The templates a module is generated from: an edit to them relinks every module."""
    return sorted((PROJECT_ROOT / "kmod").glob("*"))
