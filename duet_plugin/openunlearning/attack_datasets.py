"""``AttackQADataset``: OU's ``QADataset`` with the question wrapped in an attack template and/or the answer's first
tokens prefilled into the assistant turn. The data-side attack metrics (``prompt_attack``, ``prefill_attack``) swap
it in for a child metric's ``QADataset``, so OU's own ``rouge``/``probability`` metrics score the attacked inputs.
"""

from __future__ import annotations

from typing import Any

from data.qa import QADataset
from data.utils import preprocess_chat_instance

from duet_plugin.core.attacks.prefill import prefill_tokenized
from duet_plugin.core.attacks.prompts import render_rows


class AttackQADataset(QADataset):
    """Args (besides ``QADataset``'s):
    attack_template: a prompt-attack template (``{question}``, ``{examples}``, ``{paraphrase}`` slots) or null.
    attack_name: the template's name, for error messages.
    paraphrase_key: the row field holding a paraphrase of the question (TOFU: ``paraphrased_question``).
    few_shot_k: how many other rows' question/answer pairs fill ``{examples}`` (and ``{background}``: their answers).
    choices: answer options in ``{options}`` (this row's answer among ``choices - 1`` other rows' answers); the
        template may also use ``{masked_answer}``.
    prefill_tokens: seed the assistant turn with this many answer tokens (null: no prefill).
    """

    def __init__(
        self,
        *args: Any,
        attack_template: str | None = None,
        attack_name: str = "template",
        paraphrase_key: str = "paraphrased_question",
        few_shot_k: int = 3,
        choices: int = 4,
        prefill_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.choices = int(choices)
        super().__init__(*args, **kwargs)
        self.prefill_tokens = prefill_tokens
        if attack_template is not None:
            self._wrap_questions(attack_template, attack_name, paraphrase_key, few_shot_k)

    def _wrap_questions(self, template: str, name: str, paraphrase_key: str, few_shot_k: int) -> None:
        questions = list(self.data[self.question_key])
        answers = [a if isinstance(a, str) else a[0] for a in self.data[self.answer_key]]
        paraphrases = self.data[paraphrase_key] if paraphrase_key in self.data.column_names else None
        if "{paraphrase}" in template and paraphrases is None:
            raise ValueError(
                f"Prompt attack {name!r} needs paraphrased questions, but the data has no {paraphrase_key!r} column "
                f"(columns: {self.data.column_names}); set the metric's paraphrase_key or drop {name!r} from templates."
            )
        wrapped = render_rows(template, questions, answers, paraphrases, few_shot_k, self.choices, name)
        self.data = self.data.remove_columns(self.question_key).add_column(self.question_key, wrapped)

    def _process_sample(self, question: str, answer: str, index: int = -1) -> dict[str, Any]:
        if self.prefill_tokens is None:
            return super()._process_sample(question=question, answer=answer, index=index)
        prompt_msgs, response_msgs = [question], [answer]
        if self.fs_data is not None:
            prompt_msgs = self.fs_data[self.question_key] + prompt_msgs
            response_msgs = self.fs_data[self.answer_key] + response_msgs
        full = preprocess_chat_instance(
            self.tokenizer, self.template_args, prompt_msgs, response_msgs, self.max_length, False
        )
        item = prefill_tokenized(
            full["input_ids"],
            full["labels"],
            self.prefill_tokens,
            for_generation=self.predict_with_generate,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        item.pop("prefill_tokens")
        return {**item, "index": index}
