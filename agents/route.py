"""The routing step: order an alias's candidates from the live vendor-health table."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from schemas.config import Candidate, RelayConfig
from schemas.errors import ModelNotFound
from tables.health import Health, health_key, rank


class Router:
    """Reads health through ``view`` (a Faust table's ``get`` on the worker)."""

    def __init__(
        self,
        config: RelayConfig,
        view: Callable[[str], dict[str, Any] | None],
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.view = view
        self.rng = rng or random.Random()

    def healths(self, candidates: list[Candidate]) -> dict[str, Health]:
        out: dict[str, Health] = {}
        for c in candidates:
            key = health_key(c.vendor, c.model)
            raw = self.view(key)
            out[key] = Health.model_validate(raw) if raw else Health()
        return out

    def plan(self, alias: str, now: float) -> list[Candidate]:
        """Candidates in the order to try them, unavailable ones left out."""
        spec = self.config.models.get(alias)
        if spec is None:
            raise ModelNotFound(f"The model `{alias}` does not exist", param="model")
        return rank(spec.candidates, self.healths(spec.candidates), spec.strategy, now, self.rng)
