"""``prompt_attack``: re-measure forget metrics with each question wrapped in a jailbreak-style template.

Templates come from ``duet_plugin/core/attacks/prompt_templates.yaml`` (reverse prompt "ignore previous
instructions", role-play, prefix injection, in-context few-shot with other forget facts, paraphrased question) or
``custom_templates``. Cost: the child metrics once per template (e.g. one generation pass over the forget set each
for forget_Q_A_ROUGE); no model copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from duet_plugin.core.attacks.prompts import resolve_templates
from duet_plugin.openunlearning.metrics.attack import Attack, AttackMetric, with_attacked_inputs


class PromptAttack(AttackMetric):
    OPTIONS: ClassVar[Mapping[str, Any]] = {
        "templates": None,
        "custom_templates": None,
        "paraphrase_key": "paraphrased_question",
        "few_shot_k": 3,
    }

    def check(self, metric_name: str, children: Mapping[str, Any], **options: Any) -> None:
        resolve_templates(options["templates"], options["custom_templates"])
        with_attacked_inputs(metric_name, children)

    def attacks(
        self,
        model: Any,
        metric_name: str,
        children: Mapping[str, Any],
        shared: Mapping[str, Any],
        templates: Any = None,
        custom_templates: Mapping[str, str] | None = None,
        paraphrase_key: str = "paraphrased_question",
        few_shot_k: int = 3,
    ) -> Iterator[Attack]:
        for name, text in resolve_templates(templates, custom_templates).items():
            attacked = with_attacked_inputs(
                metric_name,
                children,
                attack_template=text,
                attack_name=name,
                paraphrase_key=paraphrase_key,
                few_shot_k=int(few_shot_k),
            )
            yield Attack(name, model, attacked, {"template": text})


prompt_attack = PromptAttack("prompt_attack")
