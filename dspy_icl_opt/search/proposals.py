"""Is a proposal an instruction? Checks a small prompt model's answers need before they cost task calls.

Measured on APO's date_understanding run (split 0, the 0.5B model as proposer, 28 candidates): most
"edits" and "paraphrases" the parsers accepted were not instructions at all. They were an example's
question copied back ("In the US, Thanksgiving is on the fourth Thursday of November. Today is ..."), a
question about one example ("If Jane's appointment will be 3 days later, what is the date today ...?"),
a bare answer ("02/14/2026"), the meta-prompt's own instruction ("Rewrite an instruction: keep its
meaning ..."), or DSPy's field markers left in the text ("[[ ## instruction ## ]]"). Each one then
costs a share of the task-call budget, and one of them led the search set (0.706 against the start's
0.471 on 17 examples) before it was level on validation (on 100 test examples it was 0.07 above the start:
the questions and copies are scored since, see below).

:func:`clean_proposal` removes what is never part of an instruction (field markers); then
:meth:`ProposalChecker.problem` names what makes the text something other than an instruction, or returns
``None``. The checks are deterministic and cheap (no LM call), so a strategy can use them as the
validator of its meta-prompt answers: a rejected answer is counted as unusable and asked again.

Four of the checks name a prompt that is not worded as an instruction but may still work as one: a
training example's text copied back, a question, a text about one example's names or numbers, and a remark about an
instruction ("The instruction should specify the date format ..."). They are
:data:`LENIENT_PROBLEMS`: the strategies score such proposals (counted apart in the report) unless built with
``check_proposals="strict"``. Measured on date_understanding (0.5B task model, 100 test examples per split):
GEPA's chosen instruction on split 1, "Today is the second day of the third month of 1966, what is the date
today in MM/DD/YYYY?" (a question, and on that split a copy of two training examples' wording), scored 0.37
against the program as given's 0.28 on split 0 and 0.37 against 0.22 on split 1, and APO's question about one
example 0.38 against 0.31 on split 0, while no instruction written by hand gained more than 0.05 there; turning
such answers down cost OPRO 14 of its 40 prompt calls on split 1. What cannot be a prompt for the task (a bare
answer, code, a refusal, a field's value, the meta-prompt's own wording or request) is always turned down.

"Copies an example" counts only text that belongs to a few examples: wording that most examples
share (a task's own instruction repeated in every question, such as disambiguation_qa's "explain the
antecedent of the pronoun ...") is the task's, and a proposal may use it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import dspy

#: A proposal with fewer words (of letters) than this is not an instruction (a bare answer, a label).
MIN_WORDS = 2
#: Word n-grams of this length are compared with the examples and the meta-prompt.
NGRAM = 5
#: A proposal whose n-grams come from example-specific text at least this much is a copied example.
COPIED_SHARE = 0.4
#: n-grams found in at least this share of the examples are the task's wording, not one example's.
SHARED_SHARE = 0.2
#: A proposal whose content words are this much one example's (names, numbers) is about that example.
SPECIFIC_WORDS_SHARE = 0.35
#: ... and at least this many such words.
SPECIFIC_WORDS_MIN = 3
COPIES_EXAMPLE = "copies a training example"
QUESTION = "a question, not an instruction"
ABOUT_ONE_EXAMPLE = "about one example (its names or numbers), not the task"
DESCRIBES_INSTRUCTION = "describes an instruction instead of giving it"
#: What :meth:`ProposalChecker.problem` names but a strategy scores anyway unless its check is strict (see above).
LENIENT_PROBLEMS = frozenset({COPIES_EXAMPLE, QUESTION, ABOUT_ONE_EXAMPLE, DESCRIBES_INSTRUCTION})
_STOPWORDS = frozenset(
    "the a an and or of to in on for with is are was be it its this that these those as at by from if then "
    "what which who when how not no do does your you each one any all their there".split())
#: What DSPy's chat adapter adds to every meta-prompt: a proposal made of it is the prompt echoed (seen on
#: hyperbaton split 2: OPRO's 0.5B proposer wrote ", and then ending with the marker for").
ADAPTER_TEXTS = (
    "Your input fields are: Your output fields are:",
    "All interactions will be structured in the following way, with the appropriate values filled in.",
    "In adhering to this structure, your objective is:",
    "Respond with the corresponding output fields, starting with the field, then, and then ending with the "
    "marker for completed.",
)
#: Program code instead of an instruction (seen on hyperbaton split 0: 2 of Iterative-APE's 19 variations
#: from the 0.5B model were "Python def find_correct_adjective_order(sentence): # Split the sentence ...").
_CODE = re.compile(r"\bdef\s+\w+\s*\(|```\s*python|\breturn\s+\w+\s*[(\[]|(?-i:^\s*(?:import\s+\w+\s*$|from\s+\w+\s+import\b))",
                   re.IGNORECASE | re.MULTILINE)
#: A reply to the proposer rather than an instruction (the 0.5B model answering OPRO's meta-prompt without its example
#: problems, date_understanding split 1, examples/benchmarks/probe_opro_proposals.py: "I'm sorry, but I don't have
#: access to the example problems to create a different instruction. ...").
_REFUSAL = re.compile(r"^\W*(?:(?:i\s*(?:'|’)?\s*m|i\s+am)\s+(?:sorry|afraid|unable)|sorry\b|i\s+(?:can\s*(?:'|’)?\s*t|cannot|"
                      r"could\s+not|couldn\s*(?:'|’)?\s*t|do\s+not|don\s*(?:'|’)?\s*t)\s+(?:help|provide|create|write|assist|access|"
                      r"have|see|answer|do)\b|as\s+an\s+ai\b|unfortunately\s*,?\s+i\b)", re.IGNORECASE)
_MARKER = re.compile(r"\[\[\s*##\s*[^\]#]*?\s*##\s*\]\]")
#: DSPy's ChatAdapter shows each output field as its marker then ``{field_name}``; a small model copies the latter.
_PLACEHOLDER = re.compile(r"\{\s*[a-z][a-z0-9]*(?:_[a-z0-9]+)*\s*\}")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
#: A remark about an instruction rather than one (APO's 1.5B proposer on date_understanding split 2: 16 of its 26
#: candidates, e.g. "The instruction should specify the format for the date (MM/DD/YYYY) in the `answer` field of the
#: output.", "The user needs to provide the correct answer to a multiple-choice question."): the text opens with the
#: instruction or the user as its subject. "The instruction is to find ..." says what to do and is not one.
_DESCRIBES = re.compile(
    r"^\W*(?:(?:the|this|that|your|my|an?)\s+(?:(?:new|improved|revised|reworded|given|current|original|above|"
    r"following|updated)\s+)?(?:instructions?|prompt)\s+(?:should|must|needs?|has\s+to|ought|could|would|will|can|"
    r"is(?!\s+to\b)|was|states|says|asks|requests|requires|specifies|tells|lacks|does)\b|the\s+user\s+"
    r"(?:should|must|needs?|has\s+to|is|will|can)\b)", re.IGNORECASE)
#: What a proposer writes before the instruction it gives ("The improved instruction is:", "Here is the reworded
#: instruction:"): a preface, dropped by :func:`clean_proposal`.
_PREFACE = re.compile(
    r"^\W*(?:here\s+is\s+|here's\s+)?(?:the|an|my)?\s*(?:new|improved|revised|reworded|updated|better)\s+"
    r"(?:instruction|prompt)(?:\s+is)?\s*:\s*", re.IGNORECASE)
#: A sentence whose word trigrams come from the meta-prompt this much is the meta-prompt's, not the task's
#: (seen on date_understanding split 0: the joint search's chosen instruction went on "Read the task's inputs, the
#: summary of the data, and the solved problems. Provide one new instruction for this task, following the style
#: hint.", the proposer's own instruction in other words, which the whole-text share of COPIED_SHARE let pass).
META_SENTENCE_SHARE = 0.5
#: ... and has at least this many trigrams (a short sentence such as "Answer the question." is anyone's).
META_SENTENCE_MIN_GRAMS = 3
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
#: A sentence that asks for an instruction is the proposer's request echoed, whatever its words (the joint search's
#: 0.5B proposer on hyperbaton split 0 at 956276d: "Write an instruction for a language model to solve the problem
#: below.", "Write a single imperative sentence that instructs a language model to solve the task below.").
_ASKS_FOR_INSTRUCTION = re.compile(
    r"\b(?:write|give|provide|generate|create|propose|craft)\s+(?:an?|one|the)?\s*(?:new\s+|single\s+|better\s+)?"
    r"instructions?\b|\binstructs?\s+(?:a|the)\s+(?:language\s+)?model\b|\binstructions?\s+(?:for|to)\s+(?:a|the)\s+"
    r"(?:language\s+)?model\b", re.IGNORECASE)


def clean_proposal(text: str) -> str:
    """``text`` without DSPy's field markers (``[[ ## instruction ## ]]``, ``[[ ## completed ## ]]``) and without
    the adapter's value placeholders (``{paraphrase}``) copied from the meta-prompt's output template.

    The placeholders are what the 1.5B proposer appended to APO paraphrases on date_understanding split 2
    ("Choose the correct answer from the list of choices ... {paraphrase}"): a bare field name in braces is the
    template's, never a requirement of the task. A preface before the instruction ("The improved instruction is:")
    goes too, unless nothing follows it."""
    text = _PLACEHOLDER.sub(" ", _MARKER.sub(" ", text or "")).strip()
    rest = _PREFACE.sub("", text, count=1).strip()
    return rest or text


def _asks_for_instruction(text: str, allowed: str) -> bool:
    """``text`` asks for an instruction and ``allowed`` (the instruction being rewritten) does not."""
    return bool(_ASKS_FOR_INSTRUCTION.search(text)) and not _ASKS_FOR_INSTRUCTION.search(allowed)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(words: Sequence[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class ProposalChecker:
    """Checks proposals against one task's examples (inputs and labels) and the meta-prompts' own text."""

    def __init__(self, examples: Iterable[dspy.Example] = (), meta_texts: Iterable[str] = (),
                 fields: Iterable[str] = ()) -> None:
        #: the program's field names: a proposal that opens with "answer:" is a field's value, not an instruction
        self._fields = {name.lower() for name in fields}
        grams_of, words_of = [], []
        for example in examples:
            words = _words(" ".join(str(v) for v in dict(example.items()).values()
                                    if isinstance(v, (str, int, float))))
            grams_of.append(_ngrams(words))
            words_of.append(set(words))
        shared = max(2, SHARED_SHARE * len(grams_of))
        gram_counts = Counter(gram for grams in grams_of for gram in grams)
        self._specific = {gram for gram, k in gram_counts.items() if k < shared}
        word_counts = Counter(word for words in words_of for word in words)
        self._specific_words = {word for word, k in word_counts.items() if k < shared}
        self._meta: set[tuple[str, ...]] = set()
        self._meta_trigrams: set[tuple[str, ...]] = set()
        for text in (*ADAPTER_TEXTS, *meta_texts):
            self._meta |= _ngrams(_words(text))
            self._meta_trigrams |= _ngrams(_words(text), 3)

    @classmethod
    def for_program(cls, program: dspy.Module, examples: Iterable[dspy.Example] = (),
                    meta_texts: Iterable[str] = ()) -> ProposalChecker:
        """A checker that knows the field names of every predictor of ``program`` (see the field rule)."""
        fields = {name for _, predictor in program.named_predictors() for name in predictor.signature.fields}
        return cls(examples, meta_texts, fields=fields)

    def without_meta_sentences(self, text: str, *, meta_texts: Iterable[str] = (), allowed: str = "") -> str:
        """``text`` without its sentences that restate the meta-prompt (its trigrams at least
        META_SENTENCE_SHARE the meta-prompt's, the adapter's or ``meta_texts``'); the rest keeps its order
        and line breaks; a sentence that asks for an instruction ("Write an instruction for a language model ...")
        goes too. Wording of ``allowed`` (the instruction being rewritten) is never the meta-prompt's.
        A text made only of such sentences comes back empty."""
        meta = set(self._meta_trigrams)
        for extra in meta_texts:
            meta |= _ngrams(_words(extra), 3)
        meta -= _ngrams(_words(allowed), 3)
        kept_lines = []
        for line in (text or "").split("\n"):
            kept = []
            for sentence in _SENTENCE_SPLIT.split(line):
                grams = _ngrams(_words(sentence), 3)
                if len(grams) >= META_SENTENCE_MIN_GRAMS and len(grams & meta) >= META_SENTENCE_SHARE * len(grams):
                    continue
                if _asks_for_instruction(sentence, allowed):
                    continue
                kept.append(sentence)
            if kept or not line.strip():
                kept_lines.append(" ".join(kept))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(kept_lines)).strip()

    def problem(self, text: str, *, allowed: str = "", meta_texts: Iterable[str] = ()) -> str | None:
        """Why ``text`` is not an instruction, or ``None`` when it may be one. A text with one of the
        :data:`LENIENT_PROBLEMS` has no other problem.

        ``allowed``: text the proposal may repeat freely (the instruction it rewrites: a paraphrase of a
        start that quotes an example is not the proposer's copy). ``meta_texts``: the asking meta-prompt's
        own wording, beside the checker's.
        """
        text = clean_proposal(text)
        words = _words(text)
        if sum(1 for word in words if not word.isdigit()) < MIN_WORDS:
            return "a bare answer, not an instruction"
        if _CODE.search(text):
            return "program code, not an instruction"
        if _REFUSAL.search(text):
            return "a refusal or apology, not an instruction"
        head, colon, _ = text.partition(":")
        if colon and head.strip().lower() in self._fields:
            return "a field's value, not an instruction"
        all_grams = _ngrams(words)
        total = len(all_grams)  # a text under NGRAM words has none: only the word check below applies
        own = _words(allowed)
        grams = all_grams - _ngrams(own)
        meta = set(self._meta)
        for extra in meta_texts:
            meta |= _ngrams(_words(extra))
        if grams and len(grams & meta) >= COPIED_SHARE * total:
            return "copies the meta-prompt"
        if _asks_for_instruction(text, allowed):
            return "asks for an instruction (the meta-prompt's request), not the task"
        # the lenient problems last, so that a text with a problem of both kinds is named by the other one
        if grams and len(grams & self._specific) >= COPIED_SHARE * total:
            return COPIES_EXAMPLE
        stripped = text.rstrip()
        if stripped.endswith("?") and len(_SENTENCE_END.findall(stripped[:-1])) == 0:
            return QUESTION
        own_words = set(own)
        content = [w for w in words if w not in _STOPWORDS and w not in own_words and (len(w) > 2 or w.isdigit())]
        specific = [w for w in content if w in self._specific_words or (w.isdigit() and len(w) >= 2)]
        if len(specific) >= SPECIFIC_WORDS_MIN and len(specific) >= SPECIFIC_WORDS_SHARE * len(content):
            return ABOUT_ONE_EXAMPLE
        if _DESCRIBES.search(text) and not _DESCRIBES.search(allowed):
            return DESCRIBES_INSTRUCTION
        return None
