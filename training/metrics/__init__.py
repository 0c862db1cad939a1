"""Task metrics: official VQA accuracy, exact match, multiple choice, COCO caption metrics."""

from training.metrics.captioning import caption_scores, java_available, simple_tokenize
from training.metrics.evaluate import (
    answer_score,
    evaluate,
    exact_match,
    multiple_choice_match,
    vqa_score,
)
from training.metrics.vqa import (
    normalize_answer,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
    vqa_label_score,
)

__all__ = [
    "answer_score",
    "caption_scores",
    "evaluate",
    "exact_match",
    "java_available",
    "multiple_choice_match",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "simple_tokenize",
    "vqa_accuracy",
    "vqa_label_score",
    "vqa_score",
]
