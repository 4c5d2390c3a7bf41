"""The unified-format collator, registered in OU's ``COLLATOR_REGISTRY`` as ``DUETCollator``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from duet_plugin.core.collate import TeacherStudentCollator


class DUETCollator(TeacherStudentCollator):
    """OU-constructible teacher/student collator: ``DUETCollator(tokenizer=..., **collator.args)``.

    ``template_args`` may be given in the collator config (``${model.template_args}``); the DUET trainer fills it
    and the teacher prefix in otherwise.
    """

    def __init__(
        self,
        tokenizer: Any,
        template_args: Mapping[str, Any] | None = None,
        prefix: str | None = None,
        placement: str = "auto",
        padding_side: str = "right",
    ) -> None:
        if padding_side != "right":
            raise ValueError(
                "DUETCollator pads on the right and tracks aligned positions itself; "
                "set collator.DUETCollator.args.padding_side=right (or drop it)."
            )
        super().__init__(tokenizer, template_args=template_args, prefix=prefix, placement=placement)
