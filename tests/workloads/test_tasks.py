"""Task prompts, parsers, gold answers and metrics on real teacher-style text, malformed outputs included."""

import json
from typing import Any

import pytest

from distillery.api.spec import PromptSpec, Task
from distillery.devcluster.teacher_server import ResponderContext, TaskAwareResponder, lookup_from_rows
from distillery.workloads.tasks import MalformedAnswer, MissingColumn, Parsed, TaskDefinition, get_task
from distillery.workloads.tasks.metrics import rouge, token_f1


def task(kind: Task, columns: dict[str, str] | None = None, **prompt: Any) -> TaskDefinition:
    return get_task(kind, PromptSpec(**prompt), columns or {})


def malformed(definition: TaskDefinition, text: str, row: dict[str, Any] | None = None) -> str:
    with pytest.raises(MalformedAnswer) as info:
        definition.parse(text, row)
    return info.value.reason


# NLI --------------------------------------------------------------------------------------------

SNLI_ROW = {"premise": "A man in a blue shirt is playing an acoustic guitar on a street corner.",
            "hypothesis": "A person is making music outdoors.", "label": 0}
NLI_COT = (
    "The premise describes a man playing an acoustic guitar. Playing a guitar produces music, and a "
    "street corner is outdoors. Every part of the hypothesis is supported by the premise.\n\n"
    "Answer: entailment"
)


def test_nli_prompts_and_parse() -> None:
    nli = task(Task.NLI)
    teacher = nli.teacher_messages(SNLI_ROW)
    assert teacher[0]["role"] == "system"
    assert "Premise: A man in a blue shirt" in teacher[1]["content"]
    assert "step by step" in teacher[1]["content"] and "'Answer: contradiction'" in teacher[1]["content"]
    student = nli.student_messages(SNLI_ROW)
    assert len(student) == 1 and "step by step" not in student[0]["content"]
    parsed = nli.parse(NLI_COT, SNLI_ROW)
    assert parsed.answer == "entailment" and parsed.rationale.startswith("The premise describes")
    assert nli.reference(SNLI_ROW) == "entailment"


@pytest.mark.parametrize(("text", "label"), [
    ("Reasoning...\n**Final Answer:** Contradiction.", "contradiction"),
    ("Answer: NEUTRAL", "neutral"),
    ("answer: The hypothesis is entailed by the premise.", "entailment"),
    ("Answer: it is not possible to tell", "neutral"),
    ("Answer: yes", "entailment"),
    ("contradiction", "contradiction"),  # a student trained on labels alone
    # Seen from Qwen2.5-Coder-0.5B-Instruct with the teacher prompt:
    ("The hypothesis goes beyond the premise.\n- Answer: neutral", "neutral"),
    ("So it cannot hold.\nTherefore, the final answer is: Answer: contradiction.", "contradiction"),
])
def test_nli_normalises_labels(text: str, label: str) -> None:
    assert task(Task.NLI).parse(text).answer == label


@pytest.mark.parametrize(("text", "reason"), [
    ("The man is clearly making music outdoors, so the hypothesis holds.", "no 'Answer:' line"),
    ("The premise supports it.\nAnswer: probably", "invalid label 'probably'"),
    ("Answer: not entailment", "invalid label"),
    ("Answer: entailment or neutral", "invalid label"),
    ("Hmm.\nAnswer:", "empty 'Answer:' line"),
    ("   ", "empty output"),
    # A marker inside a line counts only in the last line, and its answer must still be a label.
    ("The answer: entailment, I think.\nBut then again it may be neutral.", "no 'Answer:' line"),
    ("Let me think.\nThe final answer is: Answer: probably", "invalid label 'probably'"),
])
def test_nli_rejects_malformed_output(text: str, reason: str) -> None:
    assert reason in malformed(task(Task.NLI), text)


def test_nli_references_and_column_mapping() -> None:
    nli = task(Task.NLI, {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold"})
    row = {"sentence1": "A dog runs.", "sentence2": "An animal moves.", "gold": 2}
    assert "Premise: A dog runs." in nli.teacher_messages(row)[1]["content"]
    assert nli.reference(row) == "contradiction"
    assert nli.reference({**row, "gold": -1}) is None
    assert nli.reference({**row, "gold": "Neutral"}) == "neutral"
    with pytest.raises(MissingColumn, match="maps 'premise' to 'sentence1'"):
        nli.teacher_messages({"premise": "x", "hypothesis": "y"})


# Multiple choice --------------------------------------------------------------------------------

MMLU_ROW = {"question": "Which planet is known as the Red Planet?",
            "choices": ["Venus", "Mars", "Jupiter", "Saturn"], "answer": 1}
ARC_ROW = {"question": "Which of these is a renewable resource?",
           "choices": {"text": ["coal", "oil", "wind", "natural gas"], "label": ["1", "2", "3", "4"]},
           "answerKey": "3"}


def test_multiple_choice_prompts_and_references() -> None:
    mc = task(Task.MULTIPLE_CHOICE)
    content = mc.teacher_messages(MMLU_ROW)[1]["content"]
    assert "A. Venus\nB. Mars\nC. Jupiter\nD. Saturn" in content and "choice letter" in content
    assert mc.reference(MMLU_ROW) == "B"
    assert mc.reference(ARC_ROW) == "C"
    assert mc.reference({**MMLU_ROW, "answer": "Mars"}) == "B"
    assert mc.reference({**MMLU_ROW, "answer": "d"}) == "D"


@pytest.mark.parametrize(("text", "letter"), [
    ("Mars appears red because of iron oxide on its surface.\nAnswer: B", "B"),
    ("Iron oxide gives Mars its colour.\n**Answer: (b)**", "B"),
    ("Answer: B. Mars", "B"),
    ("The answer is B.", "B"),
    ("Iron oxide makes it red.\nThe answer is (B).", "B"),
    ("Mars", "B"),
    ("B", "B"),
])
def test_multiple_choice_parses_one_letter(text: str, letter: str) -> None:
    assert task(Task.MULTIPLE_CHOICE).parse(text, MMLU_ROW).answer == letter


@pytest.mark.parametrize(("text", "reason"), [
    ("Both could be argued.\nAnswer: A and C", "more than one choice letter"),
    ("Answer: B, D", "more than one choice letter"),
    ("Answer: E", "choice E is not one of A-D"),
    ("Mars is red because of rust on its surface, so it is the second option.", "no 'Answer:' line"),
    ("Answer: Pluto", "no choice letter"),
])
def test_multiple_choice_rejects_malformed_output(text: str, reason: str) -> None:
    assert reason in malformed(task(Task.MULTIPLE_CHOICE), text, MMLU_ROW)


def test_multiple_choice_without_the_row_allows_ten_letters() -> None:
    mc = task(Task.MULTIPLE_CHOICE)
    assert mc.parse("Answer: J").answer == "J"
    assert "not one of A-J" in malformed(mc, "Answer: K")


# Math -------------------------------------------------------------------------------------------

GSM8K_ROW = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                "May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
              "altogether in April and May.\n#### 72",
}
MATH_COT = (
    "In April Natalia sold 48 clips. In May she sold half as many: 48 / 2 = 24 clips.\n"
    "Altogether: 48 + 24 = 72.\nAnswer: 72"
)


def test_math_parses_gsm8k() -> None:
    math = task(Task.MATH)
    assert "Problem: Natalia sold clips" in math.teacher_messages(GSM8K_ROW)[1]["content"]
    assert math.reference(GSM8K_ROW) == "72"
    parsed = math.parse(MATH_COT)
    assert parsed == Parsed("72", MATH_COT.rsplit("\n", 1)[0])


@pytest.mark.parametrize(("text", "number"), [
    ("Answer: $1,234.00", "1234"),
    ("Answer: 72 clips", "72"),
    ("So the probability is \\boxed{\\frac{3}{4}}.", "0.75"),
    ("Answer: \\boxed{12.50}", "12.5"),
    ("Answer: 3/4", "0.75"),
    ("Answer: 1/3", "1/3"),
    ("Answer: \u22125", "-5"),
    ("Answer: 2.0", "2"),
    ("The total cost is computed above.\n#### 1,000", "1000"),
    ("18", "18"),
    ("$18.", "18"),
    # Seen from SmolLM2-135M-Instruct after LoRA on the teacher's labels: an explicit final answer, no marker line.
    ("So, the baker has 24 leftover muffins.\n\nThe final answer is 24.", "24"),
])
def test_math_normalises_numbers(text: str, number: str) -> None:
    assert task(Task.MATH).parse(text).answer == number


def test_a_boxed_answer_keeps_its_sentence_in_the_rationale() -> None:
    # Qwen2.5-Coder-0.5B-Instruct's usual ending: no answer line, the result boxed mid-sentence.
    text = "Total: 48 + 24 = 72.\n\nTherefore, Natalia sold \\(\\boxed{72}\\) clips altogether."
    parsed = task(Task.MATH).parse(text)
    assert parsed == Parsed("72", "Total: 48 + 24 = 72.\n\nTherefore, Natalia sold \\(72\\) clips altogether.")
    assert task(Task.MATH).target(parsed, include_rationale=True).endswith("clips altogether.\nAnswer: 72")


@pytest.mark.parametrize(("text", "reason"), [
    ("She sold 48 in April and 24 in May, which gives 72 in total.", "no 'Answer:' line"),
    ("The answer is 72.\nOr maybe it is 80 after all.", "no 'Answer:' line"),
    ("Answer: seventy-two", "no number"),
    ("Answer: 5/0", "division by zero"),
    ("", "empty output"),
])
def test_math_rejects_malformed_output(text: str, reason: str) -> None:
    assert reason in malformed(task(Task.MATH), text)


def test_math_scores_exact_match_after_normalisation() -> None:
    math = task(Task.MATH)
    references = [math.reference({"question": "q", "answer": a}) for a in ("#### 72", "0.75", "\\sqrt{2}")]
    assert references == ["72", "0.75", None]
    predictions = [math.prediction(t) for t in ("Answer: 72.00", "Answer: 3/4", "no idea")]
    assert predictions == ["72", "0.75", ""]
    assert math.score([*predictions[:2], "1"], ["72", "0.75", "2"]).value == pytest.approx(200 / 3)


# Summarization ----------------------------------------------------------------------------------

ARTICLE_ROW = {
    "text": "NASA's Perseverance rover collected its first rock sample from Jezero Crater on Mars in "
            "September 2021, after an earlier attempt failed because the rock crumbled. Scientists hope the "
            "core, to be returned to Earth by a later mission, will show whether the ancient lake once "
            "hosted microbial life.",
    "summary": "Perseverance took its first Mars rock sample in Jezero Crater in 2021 for return to Earth.",
}
SUMMARY_COT = (
    "Key points:\n- Perseverance collected its first rock sample in September 2021.\n"
    "- A first attempt failed.\n- The sample may reveal past microbial life.\n\n"
    "Summary: NASA's Perseverance rover took its first Mars rock sample from Jezero Crater in 2021; "
    "a later mission will return it to Earth to look for signs of ancient life."
)
DENSEST = "In 2021 Perseverance cored Jezero Crater rock that may reveal ancient microbial life."
DENSITY_OUTPUT = json.dumps([
    {"missing_entities": "Perseverance; Mars",
     "denser_summary": "A NASA rover on Mars collected a rock sample that scientists will study."},
    {"missing_entities": "Jezero Crater; 2021",
     "denser_summary": "In 2021 Perseverance took a Jezero Crater rock sample scientists will study."},
    {"missing_entities": "microbial life",
     "denser_summary": DENSEST},
], indent=2)


def test_summarization_parses_the_summary_line() -> None:
    summarize = task(Task.SUMMARIZATION, max_summary_words=40)
    content = summarize.teacher_messages(ARTICLE_ROW)[1]["content"]
    assert content.startswith("Article:\nNASA's") and "Key points:" in content
    assert "at most 40 words" in content
    parsed = summarize.parse(SUMMARY_COT)
    assert parsed.answer.startswith("NASA's Perseverance rover took")
    assert parsed.answer.endswith("ancient life.")
    assert parsed.rationale.startswith("Key points:")
    assert summarize.reference(ARTICLE_ROW) == ARTICLE_ROW["summary"]


def test_chain_of_density_keeps_the_last_summary() -> None:
    density = task(Task.SUMMARIZATION, chain_of_density=True, density_rounds=3)
    content = density.teacher_messages(ARTICLE_ROW)[1]["content"]
    assert "3 times" in content and '"denser_summary"' in content
    parsed = density.parse(f"Here are the summaries:\n```json\n{DENSITY_OUTPUT}\n```")
    assert parsed.answer == DENSEST
    assert parsed.rationale.splitlines()[0].startswith("A NASA rover")
    assert density.parse(DENSITY_OUTPUT).answer == parsed.answer


@pytest.mark.parametrize(("prompt", "text", "reason"), [
    ({"max_summary_words": 10}, SUMMARY_COT, "summary has 29 words, more than 10"),
    ({}, "Key points:\n- rover\nSummary:", "empty summary"),
    ({}, "", "empty output"),
    ({"chain_of_density": True}, DENSITY_OUTPUT[:150], "not a complete JSON list"),
    ({"chain_of_density": True}, '[{"entities": "Mars", "summary": "A rover."}]', "no 'denser_summary'"),
])
def test_summarization_rejects_malformed_output(prompt: dict[str, Any], text: str, reason: str) -> None:
    assert reason in malformed(task(Task.SUMMARIZATION, **prompt), text)


def test_rouge_matches_the_reference_implementation_with_stemming_and_lsum() -> None:
    from rouge_score import rouge_scorer

    scores = rouge(["The cat sat on the mat."], ["the cat was on the mat"])
    assert scores["rouge1"] == pytest.approx(100 * 5 / 6) and scores["rougeL"] == pytest.approx(100 * 5 / 6)
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)
    reference = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(
        "the cat was on the mat", "The cat sat on the mat.")
    assert {k: 100 * v.fmeasure for k, v in reference.items()} == pytest.approx(
        {k: scores[k] for k in reference})
    # Stemming: "running dogs" and "the dog runs" share two stems and no surface word.
    assert rouge(["running dogs"], ["the dog runs"])["rouge1"] == pytest.approx(80.0)
    # ROUGE-Lsum scores each reference sentence against all summary sentences; ROUGE-L sees one sequence.
    swapped = rouge(["Bees buzz loudly. Ants march north."], ["Ants march north. Bees buzz loudly."])
    assert swapped["rougeLsum"] == pytest.approx(100.0) and swapped["rougeL"] == pytest.approx(50.0)
    assert rouge(["x y"], ["z w"])["rougeLsum"] == 0.0


def test_summarization_reports_rouge_lsum_with_the_other_rouge_scores() -> None:
    summarize = task(Task.SUMMARIZATION)
    score = summarize.score(["the cat sat on the mat", "identical words here"],
                            ["the cat was on the mat", "identical words here"])
    assert score.metric == "rouge_lsum" and score.value == pytest.approx((5 / 6 + 1) / 2 * 100)
    assert score.details["rouge2"] == pytest.approx((3 / 5 + 1) / 2 * 100)
    assert set(score.details) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}


# Conversation -----------------------------------------------------------------------------------

CHAT_ROW = {"messages": [
    {"role": "system", "content": "You answer cooking questions."},
    {"role": "user", "content": "How long should I boil an egg for a runny yolk?"},
    {"role": "assistant", "content": "About six minutes in boiling water."},
    {"role": "user", "content": "And for a hard-boiled one?"},
    {"role": "assistant", "content": "Around ten to twelve minutes, then cool it in cold water."},
]}


def test_conversation_prompts_use_the_history_up_to_the_last_user_turn() -> None:
    chat = task(Task.CONVERSATION)
    student = chat.student_messages(CHAT_ROW)
    assert [m["role"] for m in student] == ["system", "user", "assistant", "user"]
    teacher = chat.teacher_messages(CHAT_ROW)
    assert [m["role"] for m in teacher] == ["system", "user", "assistant", "user"]
    assert "'Reply:'" in teacher[0]["content"]
    assert teacher[0]["content"].endswith("You answer cooking questions.")
    assert chat.reference(CHAT_ROW) == "Around ten to twelve minutes, then cool it in cold water."
    sharegpt = {"conversations": [{"from": "human", "value": "Hi!"}, {"from": "gpt", "value": "Hello!"}]}
    assert chat.student_messages(sharegpt) == [{"role": "user", "content": "Hi!"}]
    assert chat.reference(sharegpt) == "Hello!"


def test_conversation_parses_replies() -> None:
    chat = task(Task.CONVERSATION)
    parsed = chat.parse("Thoughts: they want a time.\nReply: Boil it for 10-12 minutes.\nThen chill it.")
    assert parsed == Parsed("Boil it for 10-12 minutes.\nThen chill it.", "Thoughts: they want a time.")
    assert chat.parse("Ten minutes is enough.").answer == "Ten minutes is enough."
    assert malformed(chat, "Thoughts: hmm\nReply:   ") == "empty reply"
    assert malformed(chat, "") == "empty reply"
    with pytest.raises(MissingColumn, match="no user turn"):
        chat.student_messages({"messages": [{"role": "assistant", "content": "Hi"}]})


def test_conversation_scores_token_f1() -> None:
    chat = task(Task.CONVERSATION)
    precision, recall = 4 / 5, 4 / 6
    assert token_f1("cool it in cold water", "cool the egg in cold water") == pytest.approx(
        2 * precision * recall / (precision + recall))
    assert chat.score(["a b", ""], ["a b", "c"]).value == pytest.approx(50.0)


# Custom -----------------------------------------------------------------------------------------

REVIEW_ROW = {"review": "The battery died after two days and support never answered.", "answer": "Negative"}


def test_custom_task_uses_templates_and_the_answer_pattern() -> None:
    custom = task(Task.CUSTOM, user_template="Classify the sentiment of this review: {review}",
                  system_template="You label product reviews.", answer_pattern=r"Sentiment:\s*(\w+)",
                  student_template="Sentiment of: {review}")
    teacher = custom.teacher_messages(REVIEW_ROW)
    assert teacher[0] == {"role": "system", "content": "You label product reviews."}
    assert teacher[1]["content"].startswith("Classify the sentiment of this review: The battery died")
    assert custom.student_messages(REVIEW_ROW) == [
        {"role": "user", "content": f"Sentiment of: {REVIEW_ROW['review']}"}]
    parsed = custom.parse("Battery failure and no support are complaints.\nSentiment: negative", REVIEW_ROW)
    assert parsed == Parsed("negative", "Battery failure and no support are complaints.")
    assert custom.parse("Answer: negative").answer == "negative"  # pattern absent: the answer line
    assert custom.parse("negative").answer == "negative"  # neither: the whole text
    assert custom.score(["negative"], [custom.reference(REVIEW_ROW) or ""]).value == 100.0
    with pytest.raises(MissingColumn, match="column 'review'"):
        custom.teacher_messages({"text": "no review column"})


def test_custom_task_without_a_pattern_asks_for_an_answer_line() -> None:
    custom = task(Task.CUSTOM, user_template="Translate to French: {text}", chain_of_thought=False)
    content = custom.teacher_messages({"text": "Good morning"})[0]["content"]
    assert content.endswith("Finish with a final line of the form 'Answer: <answer>'.")
    assert custom.parse("Answer: Bonjour").answer == "Bonjour"
    assert malformed(custom, "  \n") == "empty output"


def test_custom_task_needs_a_user_template() -> None:
    with pytest.raises(ValueError, match="userTemplate"):
        task(Task.CUSTOM)


# Across tasks -----------------------------------------------------------------------------------

ROUND_TRIP = [
    (Task.NLI, {}, SNLI_ROW, NLI_COT),
    (Task.MULTIPLE_CHOICE, {}, MMLU_ROW, "Iron oxide.\nAnswer: B"),
    (Task.MATH, {}, GSM8K_ROW, MATH_COT),
    (Task.SUMMARIZATION, {}, ARTICLE_ROW, SUMMARY_COT),
    (Task.SUMMARIZATION, {"chain_of_density": True}, ARTICLE_ROW, DENSITY_OUTPUT),
    (Task.CONVERSATION, {}, CHAT_ROW, "Thoughts: simple.\nReply: Ten minutes."),
    (Task.CUSTOM, {"user_template": "{review}"}, REVIEW_ROW, "Complaints.\nAnswer: negative"),
]


@pytest.mark.parametrize(("kind", "prompt", "row", "teacher_output"), ROUND_TRIP)
@pytest.mark.parametrize("include_rationale", [False, True])
def test_a_student_trained_on_the_target_parses_back(
    kind: Task, prompt: dict[str, Any], row: dict[str, Any], teacher_output: str, include_rationale: bool,
) -> None:
    definition = task(kind, **prompt)
    parsed = definition.parse(teacher_output, row)
    target = definition.target(parsed, include_rationale)
    assert (parsed.rationale in target) == (include_rationale and bool(parsed.rationale))
    assert definition.parse(target, row).answer == parsed.answer
    assert definition.prediction(target, row) == parsed.answer


def test_get_task_covers_every_task() -> None:
    for kind in Task:
        assert isinstance(get_task(kind, PromptSpec(user_template="{text}"), {}), TaskDefinition)


@pytest.mark.parametrize(("kind", "prompt", "row", "teacher_output"), ROUND_TRIP)
@pytest.mark.parametrize("with_gold", [False, True])
def test_the_test_teacher_answers_every_task_in_its_format(
    kind: Task, prompt: dict[str, Any], row: dict[str, Any], teacher_output: str, with_gold: bool,
) -> None:
    definition = task(kind, **prompt)
    lookup = lookup_from_rows(definition, [row]) if with_gold else {}
    reply = TaskAwareResponder(lookup)(ResponderContext(definition.teacher_messages(row), 0, 0))
    parsed = definition.parse(reply, row)
    if with_gold:
        assert parsed.answer == definition.reference(row)
