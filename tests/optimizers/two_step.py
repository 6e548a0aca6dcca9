"""Programs of two predictors shared by the strategy tests (the predictor names are what those tests check)."""

from __future__ import annotations

import dspy


class LettersThenAnswer(dspy.Module):
    """Letters first (``extract``), then the answer from them (``answer``)."""

    def __init__(self) -> None:
        super().__init__()
        self.extract = dspy.Predict(dspy.Signature("question -> letters", "List the letters."))
        self.answer = dspy.Predict(dspy.Signature("question, letters -> answer", "Answer the question."))

    def forward(self, question: str) -> dspy.Prediction:
        letters = self.extract(question=question).letters
        return self.answer(question=question, letters=letters)


class NotesThenAnswer(dspy.Module):
    """Notes first (``draft``), then the answer that reads them (``answer``)."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict(dspy.Signature("question -> notes", "Take notes on the question."))
        self.answer = dspy.Predict(dspy.Signature("question, notes -> answer", "Answer the question."))

    def forward(self, question: str) -> dspy.Prediction:
        notes = self.draft(question=question).notes
        return self.answer(question=question, notes=notes)
