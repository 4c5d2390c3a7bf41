"""``prompt_attack``: re-measure forget metrics with each question wrapped in an adversarial probe template.

Templates come from ``duet_plugin/core/attacks/prompt_templates.yaml``, grouped in RWKU's nine probe families
(prefix injection, affirmative suffix, role play, multiple choice, reverse query, synonym manipulation, background
hint, in-context learning, cross lingual), or from ``custom_templates``. By default every library template runs.

Result (besides :class:`AttackMetric`'s): ``family_by_template``, ``value_by_family[family][child]`` (the worst
template of the family, per child), ``worst_template_by_family``, ``worst_family``, ``answer_in_prompt`` (templates
whose prompt holds part of the scored answer: multiple choice, reverse query) and ``worst_case_all`` (the worst
template counting those). ``agg_value``/``worst_variant`` are the worst case over the templates that do not show
the answer (``worst_includes_answer_in_prompt: true`` counts them too).

Cost: the child metrics once per template (14 by default: the library but ``none``; e.g. one generation pass over
the forget set each for forget_Q_A_ROUGE, one forward pass each for forget_Q_A_Prob), with longer prompts than the
plain question (up to ~3x for few-shot, background and multiple choice); no model copy, and the evaluated model is
not modified (only its inputs are).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from omegaconf import OmegaConf

from duet_plugin.core.attacks.prompts import Probe, family_summary, resolve_probes
from duet_plugin.openunlearning.metrics.attack import Attack, AttackMetric, with_attacked_inputs


class PromptAttack(AttackMetric):
    OPTIONS: ClassVar[Mapping[str, Any]] = {
        "templates": None,
        "families": None,
        "custom_templates": None,
        "paraphrase_key": "paraphrased_question",
        "few_shot_k": 3,
        "choices": 4,
        "worst_includes_answer_in_prompt": False,
    }

    @staticmethod
    def _probes(options: Mapping[str, Any]) -> dict[str, Probe]:
        def plain(v: Any) -> Any:
            return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v

        return resolve_probes(
            plain(options["templates"]), plain(options["custom_templates"]), plain(options["families"])
        )

    def check(self, metric_name: str, children: Mapping[str, Any], **options: Any) -> None:
        self._probes(options)
        if int(options["choices"]) < 2:
            raise ValueError(f"{metric_name}: choices={options['choices']}; multiple choice needs at least 2 options.")
        with_attacked_inputs(metric_name, children)

    def attacks(
        self, model: Any, metric_name: str, children: Mapping[str, Any], shared: Mapping[str, Any], **options: Any
    ) -> Iterator[Attack]:
        for name, probe in self._probes(options).items():
            attacked = with_attacked_inputs(
                metric_name,
                children,
                attack_template=probe.text,
                attack_name=name,
                paraphrase_key=options["paraphrase_key"],
                few_shot_k=int(options["few_shot_k"]),
                choices=int(options["choices"]),
            )
            info = {"template": probe.text, "family": probe.family, "answer_in_prompt": probe.answer_in_prompt}
            yield Attack(name, model, attacked, info)

    def evaluate(self, model: Any, metric_name: str, cache: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out = super().evaluate(model, metric_name, cache, **kwargs)
        options = {k: kwargs.get(k, default) for k, default in self.OPTIONS.items()}
        higher_is_worse = bool(kwargs.get("higher_is_worse", True))
        probes = self._probes(options)
        by_attack, first = out["value_by_attack"], out["worst_of"]
        pick = max if higher_is_worse else min
        scored = {n: v[first] for n, v in by_attack.items() if v.get(first) is not None and not math.isnan(v[first])}
        leaky = sorted(n for n, p in probes.items() if p.answer_in_prompt)
        include = bool(options["worst_includes_answer_in_prompt"])
        counted = {n: v for n, v in scored.items() if include or n not in leaky}
        worst_all = pick(scored, key=scored.__getitem__) if scored else None
        out["worst_case_all"] = (
            {"variant": worst_all, "value": scored[worst_all], "family": probes[worst_all].family}
            if worst_all
            else None
        )
        worst = pick(counted, key=counted.__getitem__) if counted else None
        out["agg_value"] = counted[worst] if worst else None
        out["worst_variant"] = worst
        out["worst_family"] = probes[worst].family if worst else None
        out["answer_in_prompt"] = leaky
        out["family_by_template"] = {n: p.family for n, p in probes.items()}
        out.update(family_summary(probes, by_attack, first, higher_is_worse))
        return out


prompt_attack = PromptAttack("prompt_attack")
