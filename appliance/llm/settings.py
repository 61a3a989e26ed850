"""The LLM settings an admin changes from the panel: the provider (with a
write-only key), the default policy and per-claw overrides — each change
checked, written to ``llm.toml`` (``appliance/llm/edit.py``) and audited.

The key is write-only: it goes into the file and nowhere else. What anyone
can read back is whether one is set, and when (from the audit log, which
records ``key: set`` / ``removed``, never the key).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from appliance.core.errors import InvalidInput
from appliance.core.llm_policy import ClawPolicy
from appliance.core.llm_request import model_name_problem
from appliance.core.model import validate_claw_name
from appliance.llm.config import (
    CONFIG_NAME,
    ENV_PROVIDER,
    LlmConfig,
    config_from_data,
    key_problem,
    read_llm_toml,
    safe_url,
)
from appliance.llm.edit import write_llm_toml
from appliance.store import AuditQuery, Store

NEW_PROVIDER = "main"  # the [providers.*] table the panel creates on first run
POLICY_FIELDS = tuple(f.name for f in fields(ClawPolicy) if f.name != "models")
_FLOAT_FIELDS = {"daily_cost_usd", "monthly_cost_usd"}
MAX_TIMEOUT_S = 3600
MAX_KEY_CHARS = 4096
# One edit at a time in this process (read, change, write), whichever
# ``LlmSettings`` object makes it: the panel builds one per request.
_EDIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ProviderView:
    """The provider as the page shows it: never the key itself."""

    configured: bool
    source: str  # "llm.toml", "environment" or "none"
    table: str  # the [providers.*] table an edit writes
    base_url: str
    default_models: tuple[str, ...]
    timeout_s: float
    key: str  # "set", "env" (read from $key_env), "none"
    key_env: str | None
    key_set_at: str | None


@dataclass(frozen=True)
class PolicyView:
    """One policy table: what the file sets, and the result with defaults."""

    claw: str | None  # None: the default [policy]
    written: Mapping[str, Any]
    effective: ClawPolicy


def _models(text: str) -> list[str]:
    names = [n for n in text.replace(",", " ").split() if n]
    for name in names:
        # Patterns ("gpt-4o*") are allowed here; the rest as any model name.
        problem = model_name_problem(name.replace("*", "x").replace("?", "x"))
        if problem is not None:
            raise InvalidInput(f"models: {problem}", "give model names or patterns like gpt-4o*")
    return names


def _number(key: str, text: str) -> int | float:
    try:
        value: float = float(text) if key in _FLOAT_FIELDS else int(text)
    except ValueError:
        kind = "a number" if key in _FLOAT_FIELDS else "a whole number"
        raise InvalidInput(f"{key} must be {kind}", "leave it empty for no limit") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{key} must be a number ≥ 0", "leave it empty for no limit")
    return value


def parse_policy_form(form: Mapping[str, str]) -> dict[str, Any]:
    """The ``[policy]``/``[claws.NAME]`` table a form describes: an empty
    field is left out (no limit, the default, or the inherited value)."""
    table: dict[str, Any] = {}
    models = form.get("models", "").strip()
    if models:
        table["models"] = _models(models)
    for key in POLICY_FIELDS:
        text = form.get(key, "").strip()
        if text:
            table[key] = _number(key, text)
    return table


def provider_table(data: Mapping[str, Any]) -> str:
    """The ``[providers.*]`` table the file uses (``NEW_PROVIDER`` if none):
    from the raw data, so a file the gateway refuses can still be mended."""
    providers = data.get("providers")
    chosen = data.get("provider")
    if isinstance(chosen, str) and chosen:
        return chosen
    if isinstance(providers, dict) and len(providers) == 1:
        return str(next(iter(providers)))
    return NEW_PROVIDER


class LlmSettings:
    def __init__(self, store: Store, home: Path, env: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.home = home
        self.env = dict(os.environ if env is None else env)
        self._lock = _EDIT_LOCK

    def config(self) -> LlmConfig:
        return config_from_data(self.home / CONFIG_NAME, read_llm_toml(self.home), self.env)

    # -- reading -----------------------------------------------------------

    def provider(self) -> ProviderView:
        config, data = self.config(), read_llm_toml(self.home)
        up = config.upstream
        table = provider_table(data)
        spec = data.get("providers", {}).get(table, {}) if config.provider_table else {}
        key_env = spec.get("api_key_env") if not spec.get("api_key") else None
        if up is None:
            key = "none"
        elif up.name == ENV_PROVIDER:
            key, key_env = ("env", "OPENAI_API_KEY") if up.api_key else ("none", None)
        else:
            key = "set" if spec.get("api_key") else "env" if key_env else "none"
        return ProviderView(
            configured=up is not None,
            source="none"
            if up is None
            else "environment"
            if up.name == ENV_PROVIDER
            else CONFIG_NAME,
            table=table,
            base_url="" if up is None else safe_url(up.base_url),
            default_models=() if up is None else up.default_models,
            timeout_s=120.0 if up is None else up.timeout_s,
            key=key,
            key_env=str(key_env) if key_env else None,
            key_set_at=self._key_set_at() if key == "set" else None,
        )

    def _key_set_at(self) -> str | None:
        for entry in self.store.audit.search(AuditQuery(action_prefix="settings.llm_provider"), 50):
            if entry.details.get("key") in ("set", "removed"):
                return entry.ts if entry.details["key"] == "set" else None
        return None  # set by hand in the file

    def policies(self) -> list[PolicyView]:
        config, data = self.config(), read_llm_toml(self.home)
        views = [PolicyView(None, data.get("policy", {}), config.policy_for(""))]
        for name, table in sorted(data.get("claws", {}).items()):
            views.append(PolicyView(name, table, config.policy_for(name)))
        return views

    # -- changing ----------------------------------------------------------

    def set_provider(
        self,
        actor: str,
        base_url: str,
        default_models: str,
        timeout_s: str,
        api_key: str = "",
        forget_key: bool = False,
    ) -> list[str]:
        """Write the provider's table; returns what changed (audited as
        ``settings.llm_provider``). An empty ``api_key`` keeps the key."""
        base_url, api_key = base_url.strip(), api_key.strip()
        if not base_url:
            raise InvalidInput("the base URL is empty", "e.g. https://api.openai.com/v1")
        if len(api_key) > MAX_KEY_CHARS or key_problem(api_key):
            raise InvalidInput(
                "the API key has spaces or control characters, or non-ASCII ones", "paste it again"
            )
        try:
            timeout = float(timeout_s.strip() or "120")
        except ValueError:
            raise InvalidInput("the timeout must be a number of seconds", "e.g. 120") from None
        if not math.isfinite(timeout) or not 1 <= timeout <= MAX_TIMEOUT_S:
            raise InvalidInput(f"the timeout must be 1 to {MAX_TIMEOUT_S} s", "e.g. 120")
        models = _models(default_models)
        if any(ch in m for m in models for ch in "*?"):
            raise InvalidInput("the default model must be exact names", "no * or ? here")
        with self._lock:
            data = read_llm_toml(self.home)
            table = provider_table(data)
            old = dict(data.get("providers", {}).get(table, {}))
            new: dict[str, Any] = {"base_url": base_url, "timeout_s": timeout}
            if models:
                new["default_model"] = models[0] if len(models) == 1 else models
            key = "kept"
            if forget_key:
                key = "removed"
            elif api_key:
                new["api_key"], key = api_key, "set"
            else:
                for kept in ("api_key", "api_key_env"):
                    if kept in old:
                        new[kept] = old[kept]
            if key == "removed" and "api_key" not in old:
                key = "kept"  # there was none in the file
            changed = sorted(k for k in {*old, *new} - {"api_key"} if old.get(k) != new.get(k))
            if key != "kept":
                changed.append("api_key")
            if not changed:
                return []
            data.setdefault("providers", {})[table] = new
            if len(data["providers"]) > 1:
                data["provider"] = table
            write_llm_toml(self.home, data, self.env)
            self.store.audit.append(
                actor,
                "settings.llm_provider",
                table,
                {
                    "changed": changed,
                    "base_url": safe_url(base_url),
                    "default_model": models,
                    "timeout_s": timeout,
                    "key": key,
                },
            )
        return changed

    def set_policy(self, actor: str, claw: str | None, form: Mapping[str, str]) -> dict[str, Any]:
        """Replace the default ``[policy]`` (``claw`` None) or one claw's
        overrides with what ``form`` sets; audited as ``settings.budget``."""
        if claw is not None:
            self.store.claws.require(validate_claw_name(claw))
        table = parse_policy_form(form)
        with self._lock:
            data = read_llm_toml(self.home)
            if claw is None:
                old = data.get("policy", {})
                data["policy"] = table
            else:
                old = data.get("claws", {}).get(claw, {})
                data.setdefault("claws", {})[claw] = table
            if old == table:
                return table
            write_llm_toml(self.home, data, self.env)
            self.store.audit.append(
                actor, "settings.budget", claw or "default", {"old": old, "new": table}
            )
        return table

    def clear_claw_policy(self, actor: str, claw: str) -> None:
        """Drop a claw's overrides: it follows the default policy again."""
        validate_claw_name(claw)
        with self._lock:
            data = read_llm_toml(self.home)
            old = data.get("claws", {}).pop(claw, None)
            if old is None:
                raise InvalidInput(f"claw {claw!r} has no budget overrides", "nothing to remove")
            if not data["claws"]:
                del data["claws"]
            write_llm_toml(self.home, data, self.env)
            self.store.audit.append(actor, "settings.budget", claw, {"old": old, "new": None})
