"""The host's LLM configuration: which upstream, its key, prices, policies.

Two sources, the file winning when it names a provider:

* ``$CLAWDEN_HOME/llm.toml`` — named providers, prices, the default per-claw
  policy and per-claw overrides (see docs/llm.md);
* the environment — ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``, the same
  variables the ``openai`` client reads, so an operator can start with two
  exports.

The real key lives only in the ``Upstream`` object; its repr never shows it,
and a file holding a key must be private to its owner (0600) or it is refused.

Closed by default: a claw whose policy names no ``models`` may use only the
provider's ``default_model`` (one name or a list); with neither configured
it may use no model at all, and the gateway's refusal names the setting.
"""

from __future__ import annotations

import os
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from appliance.core.errors import InvalidInput
from appliance.core.llm_policy import ClawPolicy, Price
from appliance.core.llm_request import model_name_problem

CONFIG_NAME = "llm.toml"
ENV_PROVIDER = "environment"
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class LlmConfigError(InvalidInput):
    """``llm.toml`` or the LLM environment is wrong; never carries the key."""


def safe_url(url: str) -> str:
    """``url`` without user:password and query, for logs and messages
    (never raises: it also names URLs that are being refused)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:  # a broken [IPv6] literal or port: no host to show safely
        return "(an unparsable URL)"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class Upstream:
    name: str
    base_url: str
    api_key: str = field(default="", repr=False)
    timeout_s: float = 120.0
    # What a claw whose policy names no models may use (``default_model``).
    default_models: tuple[str, ...] = ()

    def __repr__(self) -> str:
        key = "set" if self.api_key else "unset"
        return (
            f"Upstream(name={self.name!r}, base_url={safe_url(self.base_url)!r}, api_key={key}, "
            f"default_models={self.default_models!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class LlmConfig:
    upstream: Upstream | None
    prices: Mapping[str, Price] = field(default_factory=dict)
    default_policy: ClawPolicy = ClawPolicy()
    claw_policies: Mapping[str, ClawPolicy] = field(default_factory=dict)
    source: str = "defaults"

    def policy_for(self, claw: str) -> ClawPolicy:
        """The claw's policy, with an unset allowlist resolved to the
        provider's default model(s) — nothing if there is none."""
        policy = self.claw_policies.get(claw, self.default_policy)
        if policy.models is None:
            defaults = self.upstream.default_models if self.upstream is not None else ()
            policy = replace(policy, models=defaults)
        return policy

    @property
    def provider_table(self) -> str | None:
        """The ``[providers.*]`` name an operator can edit, if the upstream came from the file."""
        if self.upstream is None or self.upstream.name == ENV_PROVIDER:
            return None
        return self.upstream.name


def load_llm_config(home: Path, env: Mapping[str, str] | None = None) -> LlmConfig:
    path = home / CONFIG_NAME
    return config_from_data(path, _read_toml(path) if path.exists() else {}, env)


def read_llm_toml(home: Path) -> dict[str, Any]:
    """``llm.toml`` as parsed TOML (``{}`` when there is none), with the
    0600 check for a file holding a key; for editors of the file."""
    path = home / CONFIG_NAME
    return _read_toml(path) if path.exists() else {}


def config_from_data(
    path: Path, data: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> LlmConfig:
    """The configuration parsed ``llm.toml`` contents describe (``path``
    only names the file in messages): every check ``load_llm_config`` makes,
    so an editor can validate a change before writing it."""
    env = os.environ if env is None else env
    source = str(path) if data else "environment"
    upstream = _upstream_from_file(path, data, env) or _upstream_from_env(env)
    prices = {
        str(model): _price(path, str(model), spec)
        for model, spec in _table(path, data, "prices").items()
    }
    default = _policy(path, "policy", _table(path, data, "policy"), ClawPolicy())
    claws = {
        str(name): _policy(path, f"claws.{name}", spec, default)
        for name, spec in _table(path, data, "claws").items()
    }
    return LlmConfig(upstream, prices, default, claws, source)


class ConfigLoader:
    """Re-reads ``llm.toml`` when it changes, so a new budget or key applies
    to the next call without restarting the controller."""

    def __init__(self, home: Path, env: Mapping[str, str] | None = None) -> None:
        self.home = home
        self.env = dict(os.environ if env is None else env)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._config: LlmConfig | None = None

    def __call__(self) -> LlmConfig:
        path = self.home / CONFIG_NAME
        try:
            st = path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if self._config is None or stamp != self._stamp:
                self._config = load_llm_config(self.home, self.env)
                self._stamp = stamp
            return self._config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LlmConfigError(
            f"cannot read {path}: {exc.strerror}", "check the file exists and is readable"
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # The parser's message names a line and column, never a value.
        raise LlmConfigError(f"{path} is not valid TOML ({exc})", "fix the file") from None
    if _holds_key(data):
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise LlmConfigError(
                f"{path} holds an API key but other users can read it (mode {mode:o})",
                f"run `chmod 600 {path}`, or use api_key_env instead of api_key",
            )
    return data


def _holds_key(data: dict[str, Any]) -> bool:
    providers = data.get("providers")
    if not isinstance(providers, dict):
        return False
    return any(isinstance(p, dict) and p.get("api_key") for p in providers.values())


def _table(path: Path, data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise LlmConfigError(f"{path}: [{key}] must be a table", "see docs/llm.md")
    return value


def _upstream_from_file(
    path: Path, data: Mapping[str, Any], env: Mapping[str, str]
) -> Upstream | None:
    providers = _table(path, data, "providers")
    if not providers:
        return None
    name = data.get("provider")
    if name is None and len(providers) == 1:
        name = next(iter(providers))
    if not isinstance(name, str) or name not in providers:
        raise LlmConfigError(
            f"{path}: provider = {name!r} does not name one of [providers.*] "
            f"({', '.join(sorted(providers))})",
            'set provider = "<name>" at the top of the file',
        )
    spec = providers[name]
    where = f"{path}: [providers.{name}]"
    if not isinstance(spec, dict) or not isinstance(spec.get("base_url"), str):
        raise LlmConfigError(f'{where} needs base_url = "http..."', "see docs/llm.md")
    unknown = set(spec) - {"base_url", "api_key", "api_key_env", "timeout_s", "default_model"}
    if unknown:
        raise LlmConfigError(f"{where} has unknown keys {sorted(unknown)}", "see docs/llm.md")
    key = spec.get("api_key") or ""
    if not key and spec.get("api_key_env"):
        var = str(spec["api_key_env"])
        key = env.get(var, "")
        if not key:
            raise LlmConfigError(
                f"{where} reads its key from ${var}, which is not set",
                f"export {var} for the clawden controller, or set api_key in a 0600 llm.toml",
            )
    if key_problem(str(key)):
        raise LlmConfigError(
            f"{where}: the API key has spaces, control or non-ASCII characters",
            "paste the key again, exactly as the provider shows it",
        )
    return Upstream(
        name,
        _check_url(where, spec["base_url"]),
        str(key),
        float(spec.get("timeout_s", 120)),
        _default_models(where, spec.get("default_model", [])),
    )


def _default_models(where: str, value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise LlmConfigError(
            f"{where} default_model must be a model name or a list of names", "see docs/llm.md"
        )
    for n in names:
        problem = model_name_problem(n)
        if problem is not None:
            raise LlmConfigError(
                f"{where} default_model: {problem}", "give exact model names (no patterns)"
            )
    return tuple(names)


def _upstream_from_env(env: Mapping[str, str]) -> Upstream | None:
    base = env.get("OPENAI_BASE_URL", "")
    key = env.get("OPENAI_API_KEY", "")
    if not base and not key:
        return None
    if key_problem(key):
        raise LlmConfigError(
            "OPENAI_API_KEY has spaces, control or non-ASCII characters",
            "export the key exactly as the provider shows it",
        )
    return Upstream(ENV_PROVIDER, _check_url("OPENAI_BASE_URL", base or DEFAULT_BASE_URL), key)


def _check_url(where: str, url: str) -> str:
    if _url_problem(url):
        raise LlmConfigError(
            f"{where}: base_url {safe_url(url)!r} is not an http(s) URL",
            "use e.g. https://api.openai.com/v1 or http://127.0.0.1:11434/v1",
        )
    return url.rstrip("/")


def _url_problem(url: str) -> bool:
    """True if the HTTP client could not use ``url``: what fails there
    (a bad port or IPv6 literal, a host no DNS name can be) must fail here,
    as a clear error, not later in a probe or a claw's request."""
    if not all("!" <= ch <= "~" for ch in url):
        return True  # spaces, control or non-ASCII characters (use punycode)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:
        return True
    if parts.scheme not in ("http", "https") or not host:
        return True
    if ":" in host:  # an IPv6 literal, which urlsplit has checked
        return False
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or any(not 0 < len(label) < 64 for label in labels):
        return True
    if not all(ch.isalnum() or ch in "-_" for label in labels for ch in label):
        return True
    return not all(_punycode_ok(label) for label in labels if label.startswith("xn--"))


def _punycode_ok(label: str) -> bool:
    try:
        return bool(label[4:].encode("ascii").decode("punycode"))
    except UnicodeError:
        return False


def key_problem(key: str) -> bool:
    """True if ``key`` cannot go in an Authorization header: it must be
    printable ASCII without spaces (what every provider's keys are)."""
    return not all("!" <= ch <= "~" for ch in key)


def _price(path: Path, model: str, spec: Any) -> Price:
    try:
        return Price(float(spec["prompt_per_million"]), float(spec["completion_per_million"]))
    except (TypeError, KeyError, ValueError):
        raise LlmConfigError(
            f'{path}: [prices."{model}"] needs prompt_per_million and completion_per_million',
            "give both as USD per million tokens",
        ) from None


# A cap of 0 would refuse every call in a confusing way; there is no "unlimited".
_AT_LEAST_ONE = {"max_tokens", "concurrent_requests"}


def _policy(path: Path, where: str, spec: Any, base: ClawPolicy) -> ClawPolicy:
    if not isinstance(spec, dict):
        raise LlmConfigError(f"{path}: [{where}] must be a table", "see docs/llm.md")
    names = {f.name for f in fields(ClawPolicy)}
    unknown = set(spec) - names
    if unknown:
        # A typo in a budget name must not silently mean "unlimited".
        raise LlmConfigError(
            f"{path}: [{where}] has unknown keys {sorted(unknown)}",
            f"use only {', '.join(sorted(names))}",
        )
    values: dict[str, Any] = {f.name: getattr(base, f.name) for f in fields(ClawPolicy)}
    for key, value in spec.items():
        if key == "models":
            if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
                raise LlmConfigError(
                    f"{path}: [{where}] models must be a list of strings", "see docs/llm.md"
                )
            values[key] = tuple(value)
        elif not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise LlmConfigError(f"{path}: [{where}] {key} must be a number ≥ 0", "see docs/llm.md")
        elif key in _AT_LEAST_ONE and value < 1:
            raise LlmConfigError(f"{path}: [{where}] {key} must be ≥ 1", "see docs/llm.md")
        else:
            values[key] = value if "cost" in key else int(value)
    return ClawPolicy(**values)
