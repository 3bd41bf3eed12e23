"""The referee: a small vision-language model (SmolVLM2 by default) asked a closed question about a crop, answered by
scoring, never by generating. Each allowed answer (and "none") is scored by the log-likelihood the model gives it as
its reply to the question, so the answer is always one of them, with a probability for each. (Its captions of whole
images are generated: greedy, a sentence at most.)

Per chunk of questions: one forward pass reads every picture and prompt (left-padded together), and keeps their
keys and values; a second pass scores every candidate answer of every question at once, each continuing its own
question's cache. A candidate is scored with the end-of-utterance token after it, so "retriever" does not win by
being the start of "retriever mix". Loaded through transformers' own classes (AutoProcessor,
AutoModelForImageTextToText), with no remote code; image splitting off (one 512 px tile, 64 tokens)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from ..chunking import chunked
from ..records import NONE
from .base import Model, torch_dtype
from .hub import hugging_face_offline_unless_reachable
from .inputs import fit_within

NONE_REPLY = "none of them"  # what the prompt offers, so the reply scored for NONE (shorter replies score higher)
END_OF_UTTERANCE = "<end_of_utterance>"
CAPTION_PROMPT = "Describe this picture in one short sentence."
CAPTION_TOKENS = 32


@dataclass(frozen=True)
class Question:
    """What to ask about one picture: `prompt` is the question's text, `choices` the answers allowed besides "none"."""

    picture: Image.Image
    prompt: str
    choices: tuple[str, ...]

    @property
    def candidates(self) -> tuple[str, ...]:
        return (*self.choices, NONE)


def closed_prompt(subject: str, choices: Sequence[str]) -> str:
    """The question for one crop: `subject` is what the detector says it shows ("a dog")."""
    listed = "; ".join(choices)
    return (f"This picture shows {subject}. Which one of these is it: {listed}; or none of them? "
            "Answer with one of them, exactly as written.")


class VisionLanguageReferee(Model):
    # bf16 halves the memory and runs 2x on GPUs from Ampere on; on a CPU without bf16 units it is emulated.
    AUTO_PRECISION = {"cpu": "fp32", "cuda": "bf16"}

    def _load(self):
        if not os.path.exists(self.identity.model_id):
            hugging_face_offline_unless_reachable()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kwargs = self.revision_kwargs | {"cache_dir": self.cache.hub_dir}
        # One tile per crop: splitting would cut a 512 px crop into 4+1 tiles, 17x the tokens.
        processor = AutoProcessor.from_pretrained(self.identity.model_id, do_image_splitting=False, **kwargs)
        processor.tokenizer.padding_side = "left"  # every prompt then ends where its answers begin
        model = AutoModelForImageTextToText.from_pretrained(
            self.identity.model_id, dtype=torch_dtype(self.precision_used, self.device), **kwargs)
        model.to(self.device).eval()
        return processor, model

    @property
    def input_side(self) -> int:
        longest = getattr(self.load()[0].image_processor, "max_image_size", None) or {}
        return int(longest.get("longest_edge", 0)) if isinstance(longest, dict) else 0

    def model_inputs(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """The processor squares every picture to one tile: nothing above the tile's side is read."""
        side = self.input_side
        return [fit_within(image, side)[0] if side else image for image in images]

    def caption(self, pictures: Sequence[Image.Image]) -> list[str]:
        """A short caption of each picture (what the search page shows and text search also matches)."""
        return [text for chunk in chunked(list(pictures), self.batch_size) for text in self._caption_chunk(chunk)]

    def _caption_chunk(self, pictures: Sequence[Image.Image]) -> list[str]:
        """Greedy decoding, at most CAPTION_TOKENS tokens, the prompts left-padded together."""
        import torch

        processor, model = self.load()
        pictures = self.model_inputs(pictures)
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_PROMPT}]}],
            add_generation_prompt=True)
        inputs = processor(text=[text] * len(pictures), images=[[p] for p in pictures], return_tensors="pt",
                           padding=True).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        tokenizer = processor.tokenizer
        with torch.inference_mode():
            made = model.generate(**inputs, max_new_tokens=CAPTION_TOKENS, do_sample=False,
                                  eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE),
                                  pad_token_id=tokenizer.pad_token_id)
        new = made[:, inputs["input_ids"].shape[1]:]
        return [" ".join(text.split()) for text in tokenizer.batch_decode(new, skip_special_tokens=True)]

    def judge(self, questions: Sequence[Question]) -> list[dict[str, float]]:
        """Each question's candidates (its choices and "none") with their probabilities, summing to 1."""
        out: list[dict[str, float]] = []
        for chunk in chunked(list(questions), self.batch_size):
            out.extend(self._judge_chunk(chunk))
        return out

    def _judge_chunk(self, questions: Sequence[Question]) -> list[dict[str, float]]:
        import torch

        processor, model = self.load()
        pictures = self.model_inputs([q.picture for q in questions])
        texts = [processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.prompt}]}],
            add_generation_prompt=True) for q in questions]
        prompts = processor(text=texts, images=[[p] for p in pictures], return_tensors="pt", padding=True)
        prompts = prompts.to(self.device)
        prompts["pixel_values"] = prompts["pixel_values"].to(model.dtype)
        tokenizer = processor.tokenizer
        end = tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)
        owners, answers = [], []
        for position, question in enumerate(questions):
            for candidate in question.candidates:
                owners.append(position)
                reply = NONE_REPLY if candidate == NONE else candidate
                answers.append(tokenizer(" " + reply, add_special_tokens=False)["input_ids"] + [end])
        longest = max(len(a) for a in answers)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        answer_ids = torch.tensor([a + [pad] * (longest - len(a)) for a in answers], device=self.device)
        answer_mask = torch.tensor([[1] * len(a) + [0] * (longest - len(a)) for a in answers], device=self.device)
        owner = torch.tensor(owners, device=self.device)
        with torch.inference_mode():
            read = model(**prompts, use_cache=True)
            cache = read.past_key_values
            cache.batch_select_indices(owner)  # each candidate continues its own question's keys and values
            first = read.logits[:, -1].float().log_softmax(-1)[owner]  # what the model would say first
            mask = torch.cat([prompts["attention_mask"][owner], answer_mask], dim=1)
            scored = model(input_ids=answer_ids, attention_mask=mask, past_key_values=cache, use_cache=False)
            following = scored.logits[:, :-1].float().log_softmax(-1)
        token_scores = torch.cat([first.gather(1, answer_ids[:, :1]),
                                  following.gather(2, answer_ids[:, 1:, None])[..., 0]], dim=1)
        totals = (token_scores * answer_mask).sum(1).tolist()
        out, start = [], 0
        for question in questions:
            count = len(question.candidates)
            out.append(_probabilities(question.candidates, totals[start:start + count]))
            start += count
        return out


def _probabilities(candidates: Sequence[str], log_likelihoods: Sequence[float]) -> dict[str, float]:
    """Softmax over the candidates' log-likelihoods: the model's belief restricted to the allowed answers."""
    top = max(log_likelihoods)
    weights = [math.exp(value - top) for value in log_likelihoods]
    total = sum(weights)
    return {candidate: round(weight / total, 6) for candidate, weight in zip(candidates, weights, strict=True)}
