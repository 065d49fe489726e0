"""The YAML config: vendors, model aliases and their candidates, tenants and relay keys.

Secrets never live here: a vendor key is named by the environment variable or file that
holds it, and a relay key is stored as its SHA-256.  ``load_config`` fails with the file,
the key path and what is wrong.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.envelope import MAX_CACHE_TTL_S
from schemas.errors import BadRequest

VendorKind = Literal["openai", "azure", "anthropic", "ollama"]
AliasKind = Literal["chat", "embeddings", "completions"]
# The endpoints each vendor kind's adapter serves (agents/adapters: ChatVendor,
# EmbeddingVendor, CompletionVendor): a candidate of any other alias kind would answer
# every request 400, and its fallbacks never be tried, so the config refuses it.
KIND_SERVES: dict[VendorKind, frozenset[AliasKind]] = {
    "openai": frozenset({"chat", "embeddings", "completions"}),
    "azure": frozenset({"chat", "embeddings", "completions"}),
    "anthropic": frozenset({"chat"}),
    "ollama": frozenset({"chat", "embeddings"}),
}
TOKEN_COUNTING_KINDS = frozenset({"anthropic"})  # vendors with a count_tokens endpoint
Strategy = Literal["cheapest", "quality", "latency", "weighted"]

API_TIMEOUT_S = 120.0  # a file or batch call to a vendor without timeout_s
TTL_CLASSES = {"static": 6 * 3600, "semi-static": 15 * 60, "dynamic": 60}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VendorConfig(Strict):
    kind: VendorKind
    base_url: str
    api_key_env: str | None = Field(None, description="name of the env var holding the key")
    api_key_file: str | None = Field(None, description="path of a file holding the key")
    api_keys_env: list[str] = Field(default_factory=list, description="a key pool, by env name")
    api_version: str | None = Field(None, description="Azure api-version / anthropic-version")
    timeout_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="how long a call may take to begin answering (a stream's first "
        "content, a whole answer otherwise), and the longest silence in a stream after "
        "that; unset: 3/4 of the request's time left when another candidate could take "
        f"over, all of it when none could (and {API_TIMEOUT_S:.0f} s for file and batch calls)",
    )
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    batch_discount: float = Field(0.5, ge=0, le=1)
    send_reasoning: bool = Field(
        False,
        description="send each earlier assistant turn's reasoning_content back, as the "
        "client sent it (an OpenAI-compatible vendor that wants it: DeepSeek's thinking "
        "mode with tool calls); off, it is left out, as OpenAI, Azure, Mistral and Groq "
        "refuse it",
    )

    @field_validator("base_url")
    @classmethod
    def _an_http_url(cls, url: str) -> str:
        # Said at start: without a scheme or a host every call fails (httpx's
        # UnsupportedProtocol), which would read as a vendor outage and open its breaker.
        try:
            parts = urlsplit(url)
            good = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # "http://[::1" and the like
            good = False
        if not good:
            raise ValueError(f"{url!r} is no http:// or https:// URL with a host")
        return url

    @property
    def api_timeout_s(self) -> float:
        """The time limit of calls no request's deadline bounds: files and batches."""
        return self.timeout_s or API_TIMEOUT_S

    def keys(self) -> list[str]:
        """Resolve the key names to the secrets themselves (at call time, never logged);
        stray whitespace (a newline from ``echo`` or a secrets file) is not part of a key."""
        names = [self.api_key_env, *self.api_keys_env]
        keys = [os.environ.get(n, "").strip() for n in names if n]
        if self.api_key_file:
            keys.append(Path(self.api_key_file).read_text().strip())
        return [k for k in keys if k]


def openai_itself(base_url: str) -> bool:
    """Whether a base URL is OpenAI's own API (``eu.``, ``us.``: data residency)."""
    host = urlsplit(base_url).hostname or ""
    return host == "api.openai.com" or host.endswith(".api.openai.com")


def _reasoning_refusal(vendor: VendorConfig) -> str | None:
    """Why ``send_reasoning`` cannot be set on ``vendor``, if it cannot."""
    if vendor.kind == "azure":
        return "Azure OpenAI refuses reasoning_content in messages"
    if vendor.kind == "anthropic":
        return "an anthropic vendor is sent a turn's thinking as its signed thinking blocks"
    if vendor.kind == "ollama":
        return "an ollama vendor is sent a turn's reasoning_content as its thinking already"
    if openai_itself(vendor.base_url):
        return f"OpenAI ({vendor.base_url}) refuses reasoning_content in messages"
    return None


class Candidate(Strict):
    vendor: str
    model: str
    input_per_1m: float = Field(0.0, ge=0, allow_inf_nan=False)
    output_per_1m: float = Field(0.0, ge=0, allow_inf_nan=False)
    cached_input_per_1m: float | None = Field(None, ge=0, allow_inf_nan=False)
    quality: int = 1
    weight: float = Field(1.0, ge=0, allow_inf_nan=False)


class Batching(Strict):
    """Window batching of embeddings and completions: calls within ``window_ms`` go out
    as one vendor call with array input."""

    window_ms: int = Field(50, ge=1, le=5000)
    max_size: int = Field(64, ge=2, le=2048)


class Canary(Strict):
    """Send ``percent`` of an alias's traffic to a new version, sticky per ``user``."""

    candidate: Candidate
    percent: float = Field(ge=0, le=100)
    sticky: bool = True


class ModelAlias(Strict):
    candidates: list[Candidate] = Field(min_length=1)
    strategy: Strategy = "cheapest"
    cache_ttl: str | int = "dynamic"
    kind: AliasKind = "chat"
    batching: Batching | None = None
    canary: Canary | None = None
    degrade_to: str | None = Field(
        None, description="cheaper alias used under budget or rate pressure"
    )
    degrade_after_wait_ms: int | None = Field(
        None,
        ge=0,
        description="rate pressure: a request the vendors' rate limits would hold longer than "
        "this goes to the degraded plan (degrade_to, cheapest first) instead of waiting",
    )

    def ttl_seconds(self) -> int:
        return ttl_seconds(self.cache_ttl)

    def all_candidates(self) -> list[Candidate]:
        """The candidates, and the canary's when there is one."""
        return [*self.candidates, *([self.canary.candidate] if self.canary else [])]

    def is_canary(self, vendor: str | None, model: str | None) -> bool:
        """Whether ``vendor``/``model`` is this alias's canary (whose answers are never
        cached: users of the stable version must not be served them)."""
        c = self.canary.candidate if self.canary else None
        return c is not None and (c.vendor, c.model) == (vendor, model)


class RelayKey(Strict):
    id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Budget(Strict):
    """Spend limit per period; past ``degrade_at`` the relay routes cheaper."""

    limit_usd: float = Field(gt=0)
    period: Literal["day", "month"] = "month"
    degrade_at: float = Field(0.8, gt=0, le=1)
    # At 100 %: refuse with 402, throttle with 429 and Retry-After until the period
    # resets, or serve cached answers only (stale ones too).
    on_exhausted: Literal["refuse", "throttle", "cache_only"] = "refuse"


class TenantConfig(Strict):
    keys: list[RelayKey] = Field(default_factory=list)
    models: list[str] = Field(default_factory=lambda: ["*"])
    cache_scope: Literal["tenant", "global"] = "tenant"
    budget: Budget | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    batch_store_bytes: int | None = Field(
        None,
        ge=0,
        description="bytes of Batch API uploads and message batches the tenant may keep at "
        "once (0: no limit); unset: RELAY_BATCH_STORE_BYTES",
    )

    def may_use(self, alias: str) -> bool:
        return "*" in self.models or alias in self.models


class BatchLane(Strict):
    """Background requests wait to be sent through a vendor batch API at a discount."""

    max_size: int = Field(100, ge=1)
    max_age_s: float = Field(5.0, gt=0)
    poll_s: float = Field(1.0, gt=0)
    # How long a worker's claim on a vendor batch it polls lasts unrenewed: a worker that
    # died holding one has its batches adopted by another worker this long after.
    lease_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _lease_outlasts_polls(self) -> BatchLane:
        # Renewed once per poll: a lease shorter than two polls lapses under a live worker.
        if self.lease_s < 2 * self.poll_s:
            raise ValueError(
                f"batch_lane.lease_s: {self.lease_s} s is renewed once per poll; make it at "
                f"least twice poll_s ({self.poll_s} s)"
            )
        return self


class Breaker(Strict):
    """Circuit breaker per (vendor, model): when it opens and how long it stays open."""

    consecutive_failures: int = Field(5, ge=1)
    failure_rate: float = Field(0.5, gt=0, le=1)
    min_calls: int = Field(10, ge=1)
    window_s: float = Field(60.0, gt=0)
    open_s: float = Field(10.0, gt=0)


class SimulatorConfig(Strict):
    """The simulator ``relay up`` starts for a config whose vendors are simulated."""

    port: int = Field(9100, ge=1, le=65535)
    latency_ms: float = Field(0.0, ge=0)
    chunk_gap_ms: float = Field(0.0, ge=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    rate_429: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _fault_shares_fit(self) -> SimulatorConfig:
        # Shares of the same calls: a 500 is drawn first, a 429 from what is left.
        if self.error_rate + self.rate_429 > 1:
            raise ValueError(
                f"simulator: error_rate + rate_429 is {self.error_rate + self.rate_429:g}; "
                "they are shares of the same calls and cannot add up to more than 1"
            )
        return self


class RelayConfig(Strict):
    vendors: dict[str, VendorConfig]
    models: dict[str, ModelAlias] = Field(min_length=1)
    tenants: dict[str, TenantConfig]
    batch_lane: BatchLane = Field(default_factory=BatchLane)
    breaker: Breaker = Field(default_factory=Breaker)
    simulator: SimulatorConfig | None = Field(
        None, description="settings for the simulator `relay up` starts, if any"
    )

    def digest(self) -> str:
        """SHA-256 of the config as loaded (key hashes and env var names, no secrets):
        the audit log says which config each process ran with."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def _serving_vendor(self, where: str, cand: Candidate, kind: AliasKind) -> None:
        """Refuse a candidate (at key path ``where``) whose vendor is not in the config,
        or cannot serve its alias's ``kind``."""
        vendor = self.vendors.get(cand.vendor)
        if vendor is None:
            raise ValueError(
                f"{where}.vendor: unknown vendor {cand.vendor!r} (known: {', '.join(self.vendors)})"
            )
        if kind not in KIND_SERVES[vendor.kind]:
            able = [k for k, serves in KIND_SERVES.items() if kind in serves]
            raise ValueError(
                f"{where}.vendor: {vendor.kind} vendor {cand.vendor!r} has no {kind} "
                f"endpoint (kinds that serve {kind}: {', '.join(able)})"
            )

    @model_validator(mode="after")
    def _candidates_name_vendors(self) -> RelayConfig:
        for alias, spec in self.models.items():
            for i, cand in enumerate(spec.candidates):
                self._serving_vendor(f"models.{alias}.candidates.{i}", cand, spec.kind)
            if spec.canary:
                self._serving_vendor(
                    f"models.{alias}.canary.candidate", spec.canary.candidate, spec.kind
                )
            if spec.degrade_after_wait_ms is not None and spec.degrade_to is None:
                raise ValueError(
                    f"models.{alias}.degrade_after_wait_ms: needs degrade_to (the cheaper "
                    "alias to send requests to under rate pressure)"
                )
            if spec.degrade_to is not None:
                cheaper = self.models.get(spec.degrade_to)
                if cheaper is None:
                    raise ValueError(
                        f"models.{alias}.degrade_to: unknown alias {spec.degrade_to!r}"
                    )
                if spec.degrade_to == alias or cheaper.kind != spec.kind:
                    raise ValueError(
                        f"models.{alias}.degrade_to: {spec.degrade_to!r} must be another "
                        f"{spec.kind} alias"
                    )
        for alias, spec in self.models.items():
            try:
                ttl = spec.ttl_seconds()
            except ValueError as exc:
                raise ValueError(f"models.{alias}.cache_ttl: {exc}") from None
            if ttl < 0:
                raise ValueError(
                    f"models.{alias}.cache_ttl: {ttl} s is negative (0 caches nothing)"
                )
            if ttl > MAX_CACHE_TTL_S:
                raise ValueError(
                    f"models.{alias}.cache_ttl: {ttl} s is more than the {MAX_CACHE_TTL_S} s "
                    "(30 days) an answer is kept at most"
                )
        for name, vendor in self.vendors.items():
            if "/" in name:  # health is kept per "vendor/model", which must split back
                raise ValueError(f"vendors.{name}: a vendor's name may not hold '/'")
            path = vendor.api_key_file
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"vendors.{name}.api_key_file: {path} is not a readable file")
            if vendor.send_reasoning and (why := _reasoning_refusal(vendor)):
                raise ValueError(
                    f"vendors.{name}.send_reasoning: {why}; it is for an OpenAI-compatible "
                    "vendor that wants reasoning_content back (DeepSeek's thinking mode)"
                )
        owners: dict[str, str] = {}
        for tenant, rules in self.tenants.items():
            unknown = [m for m in rules.models if m != "*" and m not in self.models]
            if unknown:
                raise ValueError(
                    f"tenants.{tenant}.models: unknown alias {unknown[0]!r} "
                    f"(known: {', '.join(self.models)})"
                )
            for key in rules.keys:
                if key.sha256 in owners:
                    raise ValueError(
                        f"tenants.{tenant}.keys.{key.id}: the same key hash as "
                        f"{owners[key.sha256]} (one relay key, one tenant)"
                    )
                owners[key.sha256] = f"tenants.{tenant}.keys.{key.id}"
        return self

    def openai_sampling(self, alias: str) -> bool:
        """Whether every vendor of the alias defaults temperature and top_p to 1, as
        OpenAI does (Ollama uses the model's own), so leaving them out is sending 1."""
        cands = self.models[alias].all_candidates()
        return all(self.vendors[c.vendor].kind != "ollama" for c in cands)

    def kind_refusal(self, alias: str, endpoint: str) -> BadRequest | None:
        """A 400 for an alias asked for what it does not serve (embeddings of a chat
        model, say), which gateway and worker both give before a vendor is paid to refuse
        it; None when it serves it, or is no alias here (a 404 of its own)."""
        spec = self.models.get(alias)
        wanted = "chat" if endpoint == "count_tokens" else endpoint
        if spec is None or spec.kind == wanted:
            return None
        return BadRequest(
            f"model: `{alias}` is a {spec.kind} model and does not serve {endpoint}",
            param="model",
        )

    def counts_tokens(self, alias: str) -> bool:
        """Whether a (stable) vendor of the alias can count input tokens (Anthropic's
        ``count_tokens``), so a count goes to it rather than being estimated."""
        cands = self.models[alias].candidates
        return any(self.vendors[c.vendor].kind in TOKEN_COUNTING_KINDS for c in cands)

    def tenant_aliases(self) -> list[tuple[str, list[str]]]:
        """Each tenant with the aliases it may use."""
        return [
            (tenant, [alias for alias in self.models if spec.may_use(alias)])
            for tenant, spec in self.tenants.items()
        ]

    def key_index(self) -> dict[str, tuple[str, str]]:
        """sha256 of a relay key -> (tenant, key id)."""
        return {k.sha256: (t, k.id) for t, spec in self.tenants.items() for k in spec.keys}


class ConfigError(Exception):
    """The config file cannot be used; the message names the file and the key."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ttl_seconds(value: str | int) -> int:
    """A TTL class name (static, semi-static, dynamic) or a number of seconds."""
    if isinstance(value, int):
        return value
    if (name := value.strip().lower()) in TTL_CLASSES:  # as the other headers are read
        return TTL_CLASSES[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"cache TTL {value!r} is neither seconds nor one of {', '.join(TTL_CLASSES)}"
        ) from None


_MERGE = "tag:yaml.org,2002:merge"  # `<<: *anchor`, whose keys a mapping may override


def _read_yaml(path: Path) -> object:
    """The file's YAML, as ``yaml.safe_load`` reads it, except that a key given twice in
    one mapping is refused: PyYAML keeps the last one without a word, so a tenant pasted
    twice would lose its keys and budget, or an alias be served by another model."""
    loader = yaml.SafeLoader(path.read_text())
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _unique_keys(path, node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _unique_keys(path: Path, node: yaml.Node, where: str, seen: set[int]) -> None:
    """Raise ``ConfigError`` at the second of two equal keys in a mapping under ``node``,
    naming its key path and both lines."""
    if id(node) in seen:  # an alias of a node already checked (or of its own parent)
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _unique_keys(path, item, f"{where}.{i}" if where else str(i), seen)
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
                continue  # a key no config holds, or merged keys, which may be overridden
            here = f"{where}.{key.value}" if where else key.value
            line = key.start_mark.line + 1
            if (key.tag, key.value) in first:
                raise ConfigError(
                    f"{path}: line {line}: {here} is given twice (first on line "
                    f"{first[key.tag, key.value]}); YAML would keep the last alone and drop "
                    "the first without a word: merge them, or rename one"
                )
            first[key.tag, key.value] = line
            _unique_keys(path, value, here, seen)


def load_config(path: Path) -> RelayConfig:
    try:
        raw = _read_yaml(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as a text file ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with vendors, models and tenants")
    try:
        return RelayConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            where = ".".join(str(p) for p in err["loc"])
            if not where or msg.startswith((f"{where}:", f"{where}.")):
                lines.append(f"{path}: {msg}")  # the message names its place itself
            else:
                lines.append(f"{path}: {where}: {msg}")
        raise ConfigError("\n".join(lines)) from None
