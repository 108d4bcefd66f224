"""The OpenAI-compatible side of the core: chat bodies read into queue requests (`chat`),
`chat.completion` bodies built from jobs (`completion`), Files (`files`) and Batches
(`batches`, `batch_input`; the worker side's `finish`). The web layer's `/v1/...` views parse
HTTP and call these."""

from appliance.openai.batches import OpenAIBatches
from appliance.openai.files import OpenAIFiles, file_object

__all__ = ["OpenAIBatches", "OpenAIFiles", "file_object"]
