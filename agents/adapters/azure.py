"""The Azure OpenAI adapter: OpenAI's wire format, with deployment URLs and an api-key header."""

from __future__ import annotations

from agents.adapters.openai import OpenAIAdapter

DEFAULT_API_VERSION = "2024-10-21"  # the GA data-plane version with batch and include_usage


V1_VERSIONS = ("v1", "preview")  # the v1 API: OpenAI's paths, no dated api-version


class AzureOpenAIAdapter(OpenAIAdapter):
    """``base_url`` is the resource endpoint (``https://<res>.openai.azure.com``); the
    vendor model name is the deployment name.

    With ``api_version: v1`` (or ``preview``), or a base URL ending in ``/openai/v1``, calls
    go to Azure's v1 API instead: ``/openai/v1/chat/completions`` and so on, the deployment
    named in the body's ``model`` as every OpenAI call names it, and no dated version."""

    kind = "azure"

    def _knows_new_limit(self) -> bool:
        return True  # every current api-version, every model

    batch_endpoint = "/chat/completions"  # Azure batch lines name paths without /v1

    def url(self, path: str, model: str | None = None) -> str:
        """Model calls go to their deployment; files and batches to the resource."""
        version = self.config.api_version or DEFAULT_API_VERSION
        if version in V1_VERSIONS or self.base.endswith("/openai/v1"):
            root = self.base if self.base.endswith("/openai/v1") else f"{self.base}/openai/v1"
            return f"{root}/{path}" + ("?api-version=preview" if version == "preview" else "")
        where = f"deployments/{model}/{path}" if model else path
        return f"{self.base}/openai/{where}?api-version={version}"

    def headers(self, api_key: str) -> dict[str, str]:
        """Azure keys go in ``api-key``, not a bearer token."""
        return {"api-key": api_key}
