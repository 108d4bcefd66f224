"""Which models the OpenAI endpoint serves (`/v1/models`) and which one answers a chat."""

from __future__ import annotations

from appliance.errors import ModelError
from appliance.registry import ModelInfo, ModelRegistry
from web.api.openai_messages import bad_request
from web.services import services

# The roles this box serves: the vision model answers chats, the summarizer writes summaries.
_SERVED_ROLES = ("vision", "summarizer")


def served() -> list[ModelInfo]:
    """The models the workers load (the configured one per role, else the first installed)."""
    settings = services().settings
    registry = ModelRegistry(settings.models_dir)
    names = {"vision": settings.vision_model, "summarizer": settings.summarizer_model}
    models = []
    for role in _SERVED_ROLES:
        try:
            models.append(registry.resolve(role, names[role]))
        except ModelError:
            continue  # none installed for this role: nothing to list
    return models


def chat_model(requested: str) -> str:
    """The name of the model that answers: always the served vision model. Naming another
    installed model is refused (it would not be the one answering); a name this box does not
    know (a client's default, e.g. "gpt-4o") is answered, and the reply names the real model."""
    vision = next((i.name for i in served() if i.role == "vision"), None)
    if vision is None:
        vision = services().settings.vision_model or "vision"
    if requested and requested != vision:
        try:
            other = ModelRegistry(services().settings.models_dir).get(requested)
        except ModelError:
            return vision
        raise bad_request(
            f"model {requested!r} is a {other.role} model that does not answer chats here; "
            f"use {vision!r}"
        )
    return vision
