"""The Azure OpenAI adapter: OpenAI's wire format, with deployment URLs and an api-key header."""

from __future__ import annotations

from agents.adapters.openai import OpenAIAdapter

DEFAULT_API_VERSION = "2024-10-21"  # the GA data-plane version with batch and include_usage


class AzureOpenAIAdapter(OpenAIAdapter):
    """``base_url`` is the resource endpoint (``https://<res>.openai.azure.com``); the
    vendor model name is the deployment name."""

    kind = "azure"

    def _knows_new_limit(self) -> bool:
        return True  # every current api-version, every model

    batch_endpoint = "/chat/completions"  # Azure batch lines name paths without /v1

    def url(self, path: str, model: str | None = None) -> str:
        """Model calls go to their deployment; files and batches to the resource."""
        version = self.config.api_version or DEFAULT_API_VERSION
        where = f"deployments/{model}/{path}" if model else path
        return f"{self.base}/openai/{where}?api-version={version}"

    def headers(self, api_key: str) -> dict[str, str]:
        """Azure keys go in ``api-key``, not a bearer token."""
        return {"api-key": api_key}
