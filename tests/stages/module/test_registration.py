"""The generated registration (kmod/livepatch.c.in filled in): functions and callbacks."""

from __future__ import annotations

from kpatchbuild.stages.module.module import PatchCallback, PatchedFunction, generate_registration


def _registration(functions: list[PatchedFunction], callbacks: list[PatchCallback]) -> str:
    return generate_registration(functions, callbacks=callbacks, replace=True,
                                 release="6.1.0-57-cloud-amd64", build_id=None,
                                 description="test")


def test_patched_source_callback_fills_the_slot() -> None:
    text = _registration(
        [PatchedFunction("vmlinux", "__set_task_comm", 0, "kpb_func_0___set_task_comm")],
        [PatchCallback("vmlinux", "pre_patch", "kpb_callback_0_pre_patch", "fs/exec.o: f")],
    )
    assert "extern int kpb_callback_0_pre_patch(struct klp_object *obj);" in text
    assert "kpb_pre_patch_t kpb_pre_patch__vmlinux = kpb_callback_0_pre_patch;" in text
    assert "kpb_post_patch_t kpb_post_patch__vmlinux __weak;" in text  # the others stay weak


def test_object_with_callbacks_and_no_function_is_registered() -> None:
    text = _registration(
        [PatchedFunction("vmlinux", "cmdline_proc_show", 0, "kpb_func_0_cmdline_proc_show")],
        [PatchCallback("binfmt_misc", "post_patch", "kpb_callback_1_post_patch",
                       "fs/binfmt_misc.o: hook")],
    )
    assert '.name = "binfmt_misc",\n\t\t.funcs = kpb_funcs_1,' in text
    table = text[text.index("kpb_funcs_1[] = {"):]
    assert table.startswith("kpb_funcs_1[] = {\n\t{ }\n};")  # empty, terminated
    assert "extern void kpb_callback_1_post_patch(struct klp_object *obj);" in text
    assert "kpb_objects[1].callbacks.post_patch = kpb_post_patch__binfmt_misc;" in text
