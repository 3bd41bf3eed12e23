"""The committee's models as clients of the model service (`vision-assets models serve`): the same methods as the
in-process models (detect, embed_images, embed_texts, prompt_vectors, classify and their vocabularies), computed by
the service, which holds the models loaded across runs and batches the requests of concurrent runs together.
Importing this module imports no model library.

Pictures are shrunk to what each model reads before they are sent (inputs.py, the same functions the in-process
models use), and sent a few requests at a time so the service can batch them. The service being unreachable (down,
restarting, a worker that died mid-call) is waited out with a doubling backoff for `patience_seconds`, then raised
as `ModelServiceUnavailable`, which the stages treat like a store outage (a retry of the step, then of the run). A
service that does not hold the model the settings name refuses at once (`ModelServiceRefused`), and so does a model
that fails on a picture: neither is healed by waiting."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import requests
from PIL import Image

from ..chunking import chunked
from ..records import Detection, Label
from .base import ModelIdentity, ModelLoadError
from .inputs import fit_within, scaled_box, shrink_to_cover
from .referee import Question
from .wire import ModelRef, ModelRequest, decode_vectors, encode_picture

PREDICT_PATH = "/v1/predict"
MODELS_PATH = "/v1/models"
TRANSIENT_STATUS = {502, 503, 504}


class ModelServiceUnavailable(RuntimeError):
    """The model service could not be reached for the whole patience: transient (the stage retries)."""


class ModelServiceRefused(ModelLoadError):
    """The model service answered, and what it said will not change by asking again."""


class ModelFailedOnImage(RuntimeError):
    """A model raised on some of the pictures it was given (the others were answered)."""


def model_ref(role: str, identity: ModelIdentity, pretrained: str = "") -> ModelRef:
    model_id = f"{identity.model_id}/{pretrained}" if pretrained else identity.model_id
    return ModelRef(role=role, model_id=model_id, revision=identity.revision)


class ModelServiceClient:
    def __init__(self, url: str, patience_seconds: float = 120.0, timeout_seconds: float = 120.0,
                 items_per_request: int = 16, requests_in_flight: int = 4):
        self.url = url.rstrip("/")
        self.patience_seconds = patience_seconds
        self.timeout_seconds = timeout_seconds
        self.items_per_request = items_per_request
        self.requests_in_flight = requests_in_flight
        self._sessions = threading.local()  # requests.Session is not shared between threads
        self._spent: dict[str, float] = {}  # role -> the seconds the service says it computed for this client
        self._spent_lock = threading.Lock()

    @property
    def _session(self) -> requests.Session:
        if not hasattr(self._sessions, "session"):
            self._sessions.session = requests.Session()
        return self._sessions.session

    def ask(self, task: str, ref: ModelRef, texts: Sequence[str] = ()) -> Any:
        """A whole-model task (describe, prompt_vectors, label_names): its value."""
        answer = self._post(ModelRequest(task=task, model=ref, texts=list(texts)))
        return answer["value"]

    def items(self, task: str, ref: ModelRef, images: Sequence[Image.Image] = (), texts: Sequence[str] = (),
              questions: Sequence[tuple[str, Sequence[str]]] = ()) -> list:
        """An item task over many pictures or texts: a value per item, in order. Sent `items_per_request` at a time,
        `requests_in_flight` requests at once (the service batches them with other runs' requests). `questions`:
        per picture, a prompt and its allowed answers (`judge`)."""
        asked = list(questions) or [("", ())] * len(images)
        pieces = list(chunked(list(zip(images, asked, strict=True)) if images else list(texts), self.items_per_request))

        def send(piece) -> list[dict]:
            if images:
                request = ModelRequest(task=task, model=ref, images=[encode_picture(image) for image, _ in piece],
                                       prompts=[prompt for _, (prompt, _) in piece] if questions else [],
                                       choices=[list(choices) for _, (_, choices) in piece] if questions else [])
            else:
                request = ModelRequest(task=task, model=ref, texts=list(piece))
            return self._post(request)["answers"]

        if len(pieces) <= 1:
            answers = [a for piece in pieces for a in send(piece)]
        else:
            with ThreadPoolExecutor(max_workers=self.requests_in_flight) as pool:
                answers = [a for done in pool.map(send, pieces) for a in done]
        with self._spent_lock:
            self._spent[ref.role] = self._spent.get(ref.role, 0.0) + sum(a.get("seconds", 0.0) for a in answers)
        failed = {i: a["error"] for i, a in enumerate(answers) if a.get("error")}
        if failed:
            first = next(iter(failed.items()))
            raise ModelFailedOnImage(f"{ref.role} ({ref.model_id}) failed on {len(failed)} of {len(answers)} item(s) "
                                     f"at the model service, first item {first[0]}: {first[1]}")
        return [a["value"] for a in answers]

    def spent(self, role: str) -> float:
        """The seconds the service computed this client's items of that model (its clock, not the queue's)."""
        with self._spent_lock:
            return self._spent.get(role, 0.0)

    def held(self) -> dict[str, Any]:
        """What the service holds and has loaded (its readiness)."""
        return self._get(MODELS_PATH)

    def _post(self, request: ModelRequest) -> dict:
        request.sent_at = time.time()
        headers = {"X-Model-Role": request.model.role, "X-Model-Id": request.model.model_id,
                   "X-Model-Revision": request.model.revision}
        response = self._with_patience(lambda: self._session.post(
            self.url + PREDICT_PATH, data=request.model_dump_json(), headers=headers, timeout=self.timeout_seconds))
        answer = response.json()
        if "refused" in answer or "failed" in answer:
            raise ModelServiceRefused(f"model service at {self.url}: {answer.get('refused') or answer.get('failed')}")
        return answer

    def _get(self, path: str) -> dict:
        return self._with_patience(lambda: self._session.get(self.url + path, timeout=self.timeout_seconds)).json()

    def _with_patience(self, call) -> requests.Response:
        deadline, wait, last = time.monotonic() + self.patience_seconds, 0.5, ""
        while True:
            try:
                response = call()
                if response.status_code not in TRANSIENT_STATUS:
                    if response.status_code >= 400:
                        raise ModelServiceRefused(f"model service at {self.url} answered {response.status_code}: "
                                                  f"{_detail(response)}")
                    return response
                last = f"HTTP {response.status_code}: {_detail(response)}"
            except (requests.ConnectionError, requests.Timeout) as error:
                last = f"{type(error).__name__}: {error}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModelServiceUnavailable(f"model service at {self.url} unreachable for "
                                              f"{self.patience_seconds:.0f}s ({last}): is `vision-assets models serve` "
                                              "running there?")
            time.sleep(min(wait, remaining))
            wait = min(wait * 2, 15.0)


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", response.text[:300]))
    except ValueError:
        return response.text[:300]


class RemoteModel:
    """A model the service holds: what it is (the identity the settings name) and what the service says of it."""

    def __init__(self, client: ModelServiceClient, ref: ModelRef, identity: ModelIdentity):
        self.client, self.ref, self.identity = client, ref, identity
        self.load_count = 0  # nothing is loaded in this process

    @functools.cached_property
    def facts(self) -> dict[str, Any]:
        return self.client.ask("describe", self.ref)

    @property
    def device(self) -> str:
        return f"{self.facts['device']} (model service)"

    @property
    def input_side(self) -> int:
        return int(self.facts["input_side"])

    @property
    def is_loaded(self) -> bool:
        return False

    @property
    def device_seconds(self) -> float:
        """The service's seconds on this model's items so far (vision/models/device_time.py reads it)."""
        return self.client.spent(self.ref.role)

    def load(self) -> None:
        self.facts  # noqa: B018 - asking proves the service holds the model and loads it there

    def unload(self) -> None:
        pass


class RemoteDetector(RemoteModel):
    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        inputs = [fit_within(image, self.input_side) for image in images]
        found = self.client.items("detect", self.ref, images=[shrunk for shrunk, _ in inputs])
        return [[Detection(**_scaled(d, factors)) for d in boxes] for boxes, (_, factors) in zip(found, inputs, strict=True)]

    @property
    def class_names(self) -> list[str]:
        return list(self.facts["class_names"])


def _scaled(detection: dict, factors: tuple[float, float]) -> dict:
    return detection | {"box": scaled_box(detection["box"], *factors)}


class RemoteEmbedder(RemoteModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._prompt_vectors: dict[tuple[str, ...], np.ndarray] = {}

    @property
    def dimension(self) -> int:
        return int(self.facts["dimension"])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        side = self.input_side
        encoded = self.client.items("embed_images", self.ref, images=[shrink_to_cover(i, side) for i in images])
        return decode_vectors(encoded, self.dimension)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return decode_vectors(self.client.items("embed_texts", self.ref, texts=texts), self.dimension)

    def prompt_vectors(self, prompts: Sequence[str]) -> np.ndarray:
        """The service keeps them on disk per model and prompt list; this run keeps them in memory."""
        key = tuple(prompts)
        if key not in self._prompt_vectors:
            self._prompt_vectors[key] = decode_vectors(self.client.ask("prompt_vectors", self.ref, prompts),
                                                       self.dimension)
        return self._prompt_vectors[key]


class RemoteClassifier(RemoteModel):
    def classify(self, images: Sequence[Image.Image]) -> list[list[Label]]:
        side = self.input_side
        found = self.client.items("classify", self.ref, images=[shrink_to_cover(i, side) for i in images])
        return [[Label(**label) for label in labels] for labels in found]

    @functools.cached_property
    def label_names(self) -> list[str]:
        return list(self.client.ask("label_names", self.ref))

    @property
    def label_count(self) -> int:
        return int(self.facts["label_count"])


class RemoteReferee(RemoteModel):
    def caption(self, pictures: Sequence[Image.Image]) -> list[str]:
        side = self.input_side
        return self.client.items("caption", self.ref, images=[fit_within(p, side)[0] for p in pictures])

    def judge(self, questions: Sequence[Question]) -> list[dict[str, float]]:
        side = self.input_side
        return self.client.items("judge", self.ref, images=[fit_within(q.picture, side)[0] for q in questions],
                                 questions=[(q.prompt, q.choices) for q in questions])


def remote_model(client: ModelServiceClient, ref: ModelRef, identity: ModelIdentity) -> RemoteModel:
    kind = {"detector": RemoteDetector, "embedder": RemoteEmbedder, "referee": RemoteReferee}.get(ref.role,
                                                                                                  RemoteClassifier)
    return kind(client, ref, identity)
