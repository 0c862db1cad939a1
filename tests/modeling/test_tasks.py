"""The one task definition (`modeling.tasks`): which tasks are scored, the text a scored
answer gives, which tasks caption, and the prompt an artifact records."""

from __future__ import annotations

import pytest
from family_helpers import blip_model

from benchmarks.florence2_sizes import sized_config
from modeling.config import PRESETS, preset
from modeling.families import blip, florence2
from modeling.tasks import BACKBONE_FAMILIES, TASKS, ChoiceAnswer, task_prompt


def test_scored_tasks_are_exactly_those_with_candidate_labels():
    assert {name for name, spec in TASKS.items() if spec.is_scored} == {"nlvr2", "tvqa",
                                                                        "how2qa"}
    for spec in TASKS.values():
        assert spec.is_scored == bool(spec.candidate_labels(("left", "up")))


def test_captioning_tasks_are_the_generative_tasks_without_a_question():
    assert {name for name, spec in TASKS.items() if spec.is_captioning} == {"caption", "tvc",
                                                                            "yc2c"}
    assert all(spec.metric == "CIDEr" for spec in TASKS.values() if spec.is_captioning)


def test_scored_answer_is_the_label_for_nlvr2_and_the_option_text_for_multiple_choice():
    assert TASKS["nlvr2"].answer_text(0) == "true"
    assert TASKS["nlvr2"].answer_text(1) == "false"
    choices = ("red circle", "blue", "left")
    for task in ("tvqa", "how2qa"):
        assert TASKS[task].answer_text(2, choices) == "left"


def test_multiple_choice_candidates_are_the_labels_or_the_options_own_texts():
    choices = ("red circle", "blue", "left")
    for task in ("tvqa", "how2qa"):
        assert TASKS[task].candidate_labels(choices) == ["a0", "a1", "a2"]
        assert TASKS[task].candidate_labels(choices, ChoiceAnswer.TEXT) == list(choices)
        assert TASKS[task].candidate_labels(choices, ChoiceAnswer.TEXT_MEAN) == list(choices)
    assert TASKS["nlvr2"].candidate_labels(choices, ChoiceAnswer.TEXT) == ["true", "false"]
    assert TASKS["vqa"].candidate_labels(choices, ChoiceAnswer.TEXT) == []


@pytest.mark.parametrize("task", ["vqa", "gqa", "caption", "tvc", "yc2c"])
def test_a_generating_task_has_no_scored_answer(task):
    with pytest.raises(ValueError, match=f"task '{task}' generates its answer"):
        TASKS[task].answer_text(0, ("a", "b"))


def test_task_prompt_is_the_spec_prompt_or_the_name_and_a_colon():
    assert task_prompt("nlvr2") == "nlvr: "
    assert {task: task_prompt(task) for task in TASKS} == {
        task: spec.prompt for task, spec in TASKS.items()}
    assert task_prompt("refcoco") == "refcoco: "


def _florence2_processor():
    """transformers' Florence2Processor over a tiny word tokenizer (its prompt table is
    what this checks; the tokenizer only has to carry the image token)."""
    from transformers import CLIPImageProcessorPil, Florence2Processor

    from modeling.tokenizer import build_word_tokenizer
    tokenizer = build_word_tokenizer(["what"], "bart", 64)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.image_token, tokenizer.image_token_id = "<image>", tokenizer.convert_tokens_to_ids(
        "<image>")
    images = CLIPImageProcessorPil()
    images.image_seq_length = 1
    return Florence2Processor(images, tokenizer)


def test_florence2_prompts_are_what_florence2_processor_builds_from_its_task_tokens():
    """Captioning: the processor's expansion of `<CAPTION>`; VQA: a tagged question, which
    the processor passes through unchanged (a client using it sends the same text)."""
    processor = _florence2_processor()
    caption = TASKS["caption"].source_text(family="florence2")
    assert processor._construct_prompts(["<CAPTION>"]) == [caption]
    question = TASKS["vqa"].source_text("what is left of the cube?", family="florence2")
    assert processor._construct_prompts([question]) == [question]
    assert question == "<VQA>what is left of the cube?"
    assert TASKS["gqa"].source_text("what?", family="florence2") == "<GQA>what?"
    assert task_prompt("caption", "florence2") == caption


def test_vl_and_blip_families_keep_vl_adapter_prompts():
    for family in ("vl", "blip"):
        for name, spec in TASKS.items():
            assert spec.prompt_for(family) == spec.prompt == task_prompt(name, family)
    assert TASKS["vqa"].source_text("what?") == "vqa: what?"


def test_backbone_family_of_each_config_names_its_modeling_families_module():
    from modeling.config import preset
    from modeling.families import blip, florence2

    config = florence2.backbone_config(sized_config("tiny"), 32)
    assert config.family == config.with_features(32).family == "florence2"
    vqa = blip_model("vqa", "tiny", device="meta")
    assert blip.backbone_config(vqa.config, "BlipForQuestionAnswering").family == "blip"
    assert preset("tiny").family == preset("tiny-bart").family == "vl"


@pytest.mark.parametrize("mode", ["vqa", "caption"])
def test_only_a_blip_captioning_model_reads_no_text_and_its_config_json_says_so(tmp_path,
                                                                                mode):
    from blip_helpers import blip_folder

    from modeling.config import preset
    from modeling.families import backbone_config, blip

    folder = blip_folder(tmp_path, mode)
    assert backbone_config(folder) == blip.load(folder).config  # config.json alone
    assert backbone_config(folder).reads_text == (mode == "vqa")
    assert preset("tiny").reads_text and preset("tiny-bart").reads_text


def test_backbone_families_name_every_family_a_backbone_config_reports():
    """`import-peft --family` offers exactly the families backbones have."""
    configs = [preset(name) for name in PRESETS]
    configs.append(florence2.backbone_config(sized_config("tiny"), 32))
    caption = blip_model("caption", "tiny", device="meta")
    configs.append(blip.backbone_config(caption.config, "BlipForConditionalGeneration"))
    assert {config.family for config in configs} == set(BACKBONE_FAMILIES)
