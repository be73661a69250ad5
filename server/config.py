"""What `lcmlive serve` is told, declared once: each setting's default, range and help (`ServeSettings`, read from
flags, `LCMLIVE_*` variables and a `--config` TOML file), and the frozen view of it that the app's parts read
(`ServerConfig`). Imports no torch: reading the config must not load the model's stack.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from .access import ANY_HOST, is_ip_literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # the project supports 3.10, whose standard library has no TOML reader
    import tomli as tomllib

log = logging.getLogger("lcmlive")

ENV_PREFIX = "LCMLIVE_"
# Batches of 8 at 512 px stay far inside a GPU's memory next to an SD1.5 model; more streams make more batches.
DEFAULT_MAX_BATCH = 8
DEFAULT_BITRATE_KBPS = 2500
# The tiny model on a CPU makes about 2 frames/s at 512 px and 6-8 at 256 px; a GPU holds 512 at 30 fps. A CPU's
# first picture, on 2 cores with the browser beside the server (scripts/screenshots.py, 3 runs each at load 1-2.5):
# at 8 fps it settled at 192x128, at 6 fps at 256x192 (twice the Laplacian variance of the output). The CPU ladder
# stops at 192: its 128 rung is a 128x128 square of the 4:3 camera, where the toy's shapes are blobs (at load 7-9
# the 8 fps default sat there).
DEFAULT_MAX_RESOLUTION = {"cuda": 512, "cpu": 256}
DEFAULT_MIN_RESOLUTION = {"cuda": 128, "cpu": 192}
DEFAULT_TARGET_FPS = {"cuda": 30.0, "cpu": 6.0}
MIN_TARGET_FPS, MAX_TARGET_FPS = 1.0, 60.0

# A DNS name (labels of letters, digits and hyphens), optionally with a leading dot for the names below it.
HOST_NAME = re.compile(r"\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?")


class SettingsError(ValueError):
    """Settings that cannot work: one line per bad value, each naming where it came from."""


@dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line, beside its field."""

    metavar: str | None = None
    repeatable: bool = False  # given again, it adds (each value may also list several, comma-separated)
    deprecated: tuple[str, ...] = ()  # older spellings that still work and say so once at start


# Several values: repeated flags, a comma-separated string (a flag, a variable) or a TOML list.
Names = Annotated[tuple[str, ...], NoDecode]


class ServeSettings(BaseSettings):
    """Every setting of `lcmlive serve`. The flag is the field's name with dashes, the TOML key is the name, the
    variable is LCMLIVE_ and the name in capitals; the help is the description."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="port")
    model: str = Field(
        default="auto",
        description="preset or local diffusers folder; auto = {cuda_preset} on CUDA, else {offline_preset}",
    )
    device: str = Field(default="auto", description="cpu, cuda, cuda:N or auto")
    controlnet: Names = Field(
        default=(),
        description="ControlNets of the model's family, comma-separated: {control_kinds} (e.g. canny,depth); each "
        "stream sets how much each one shapes its picture",
    )
    lora_dir: Path | None = Field(
        default=None,
        description="a folder of style LoRAs (diffusers or kohya .safetensors): each file a style that every stream "
        "can pick live (the `style` param)",
    )
    tiny_vae: bool = Field(
        default=False, description="TAESD / TAESDXL instead of the full VAE: faster, a little softer"
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the UNet and VAE decoder (CUDA graphs on a GPU), one graph per processing size, "
        "made at start for each size of the adaptive ladder (minutes; /health says compiling); for GPUs, slower on "
        "a CPU",
    )
    token: str | None = Field(default=None, description=f"require this token (or set {ENV_PREFIX}TOKEN)")
    max_streams: Annotated[int, Flag(deprecated=("--max-sessions",))] = Field(
        default=4, ge=1, description="most streams (publishers: the page's camera, WHIP) at once"
    )
    max_viewers: int = Field(default=8, ge=1, description="most WHEP viewers per stream")
    max_controllers: int = Field(
        default=8,
        ge=1,
        description="most control sockets per stream (they send no offer, so no offer timeout frees them)",
    )
    allow_origin: Annotated[Names, Flag(metavar="ORIGIN", repeatable=True)] = Field(
        default=(), description="a web origin (e.g. https://studio.example) whose pages may use this server; repeatable"
    )
    allow_host: Annotated[Names, Flag(metavar="NAME", repeatable=True)] = Field(
        default=(),
        description="a host name this server is reached by besides localhost and IP addresses (a LAN name, a reverse "
        f"proxy's name; .example.com for a domain and its subdomains); repeatable; '{ANY_HOST}' turns the check off",
    )
    offer_timeout: float = Field(
        default=15.0, gt=0, description="seconds a publishing socket may wait before its offer"
    )
    connect_timeout: float = Field(default=30.0, gt=0, description="seconds a peer connection may take to connect")
    idle_timeout: float = Field(default=30.0, gt=0, description="seconds without a camera frame before a stream ends")
    target_fps: float | None = Field(
        default=None,
        ge=MIN_TARGET_FPS,
        le=MAX_TARGET_FPS,
        description=f"frame rate each stream starts with (default {DEFAULT_TARGET_FPS['cuda']:g} on CUDA, "
        f"{DEFAULT_TARGET_FPS['cpu']:g} on a CPU)",
    )
    max_batch: int = Field(
        default=DEFAULT_MAX_BATCH,
        ge=1,
        le=64,
        description="at most this many streams' frames in one model call (1: each alone)",
    )
    cert: str | None = Field(
        default=None, description="TLS certificate (PEM): browsers give the camera only to https off localhost"
    )
    key: str | None = Field(default=None, description="TLS private key (PEM) for --cert")
    ice_loopback: bool = Field(
        default=False, description="WebRTC over 127.0.0.1 only (tests, or browser and server on one machine)"
    )
    scenes: Annotated[Path | None, Flag(metavar="FILE")] = Field(
        default=None, description='scenes: a JSON list of {"name", "params"}; saving a scene writes it back'
    )
    osc_port: int | None = Field(
        default=None, ge=1, le=65535, description="listen for OSC control on this UDP port (off by default)"
    )
    osc_host: str = Field(default="127.0.0.1", description="address for OSC (OSC has no authentication)")
    osc_allow: Annotated[Names, Flag(metavar="ADDRESS", repeatable=True)] = Field(
        default=(),
        description="an IP address whose OSC messages are heard when --osc-host is not localhost; repeatable",
    )
    osc_send: Annotated[Names, Flag(metavar="HOST:PORT", repeatable=True)] = Field(
        default=(),
        description="send each stream's sound features (level, bands, onset, bpm, beat) as OSC to HOST:PORT, "
        "50 times a second; repeatable",
    )
    metrics_public: bool = Field(
        default=False, description="serve /metrics without the token (a trusted scraper network)"
    )
    replicas: Annotated[int | None, Flag(metavar="N")] = Field(
        default=None,
        ge=1,
        description="run N replicas on Ray Serve, each with its own model and engine (one GPU each where the cluster "
        "has GPUs); needs lcmlive[ray]",
    )
    ray_address: str | None = Field(
        default=None,
        description="with --replicas: join this Ray cluster (default: start one on this machine, loopback)",
    )
    record_dir: Annotated[Path, Flag(metavar="DIR")] = Field(
        default=Path("recordings"),
        description="recordings go here (POST /streams/NAME/recording), one folder each",
    )
    record_min_free: Annotated[float, Flag(metavar="GB")] = Field(
        default=2.0,
        ge=0,
        description="GB of free disk below which a recording does not start, and a running one stops",
    )
    bitrate: int = Field(
        default=DEFAULT_BITRATE_KBPS,
        ge=100,
        le=50_000,
        description="stylised video kbps, one encode per stream for all its viewers",
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple:
        # Only what it is given: `load_settings` layers the file, the environment and the flags itself, so that a bad
        # value's error can say which of them it came from.
        return (init_settings,)

    @field_validator("controlnet", "allow_origin", "allow_host", "osc_allow", "osc_send", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
            return value  # pydantic says what is wrong with it
        return tuple(part.strip() for v in values for part in v.split(",") if part.strip())

    @field_validator("osc_send")
    @classmethod
    def _osc_targets(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        for target in targets:
            parse_host_port(target)  # its ValueError says what is wrong
        return targets

    @field_validator("controlnet")
    @classmethod
    def _known_kinds(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        if not kinds:
            return kinds
        # Only when kinds are named: the table of kinds lives with the models, and importing it imports torch.
        from pipelines.control import parse_kinds

        return parse_kinds(kinds)

    @field_validator("allow_origin")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        origins = tuple(origin.rstrip("/") for origin in origins)
        for origin in origins:
            if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
                raise ValueError(f"takes an origin like https://host:port, got {origin!r}")
        return origins

    @field_validator("allow_host")
    @classmethod
    def _host_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if name != ANY_HOST and not HOST_NAME.fullmatch(name):
                raise ValueError(f"takes a host name like studio.lan (no scheme or port), got {name!r}")
        return names

    @model_validator(mode="after")
    def _together(self) -> ServeSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together")
        if self.ray_address is not None and self.replicas is None:
            raise ValueError("--ray-address goes with --replicas")
        return self

    def page_url(self) -> str:
        """Where to point a browser (with the token, so that the page can use it)."""
        scheme = "https" if self.cert else "http"
        shown_host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        query = f"?token={self.token}" if self.token else ""
        return f"{scheme}://{shown_host}:{self.port}/{query}"

    def server_config(self, replica: str | None = None) -> ServerConfig:
        """What the app's parts read (one server, or the replica called `replica`)."""
        hosts = self.allow_host
        if not is_ip_literal(self.host) and self.host != "localhost":
            hosts = (*hosts, self.host)  # the name it was told to listen on is one it is reached by
        return ServerConfig(
            token=self.token,
            max_streams=self.max_streams,
            max_viewers=self.max_viewers,
            max_controllers=self.max_controllers,
            target_fps=self.target_fps,
            max_batch=self.max_batch,
            allow_origins=self.allow_origin,
            allow_hosts=hosts,
            offer_timeout=self.offer_timeout,
            connect_timeout=self.connect_timeout,
            idle_timeout=self.idle_timeout,
            bitrate_kbps=self.bitrate,
            metrics_public=self.metrics_public,
            scenes_path=self.scenes,
            osc_port=self.osc_port,
            osc_host=self.osc_host,
            osc_allow=self.osc_allow,
            osc_send=tuple(parse_host_port(target) for target in self.osc_send),
            record_dir=self.record_dir,
            record_min_free_bytes=round(self.record_min_free * 1e9),
            replica=replica,
            compile=self.compile,
        )


def parse_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT` for an IPv6 address) as (host, port); ValueError that says what is wrong."""
    host, _, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"an OSC address to send to is HOST:PORT with a port 1-65535, not {text!r}")
    return host, int(port)


def _default(name: str) -> Any:
    return ServeSettings.model_fields[name].default


@dataclass(frozen=True)
class ServerConfig:
    """The app's view of the settings: access, limits, timeouts and video; its defaults are the settings'."""

    token: str | None = None
    max_streams: int = _default("max_streams")  # streams at once (`--max-streams`)
    max_viewers: int = _default("max_viewers")
    max_controllers: int = _default("max_controllers")
    target_fps: float | None = None  # each stream's starting target; None: by device
    max_batch: int = _default("max_batch")  # frames of different streams run as one model call
    allow_origins: tuple[str, ...] = ()  # other web origins whose pages may use the server
    allow_hosts: tuple[str, ...] = ()  # host names besides localhost that the server is reached by ("*": any)
    offer_timeout: float = _default("offer_timeout")  # a publishing socket that sends no offer in this time is closed
    connect_timeout: float = _default("connect_timeout")  # a peer connection not connected in this time is closed
    idle_timeout: float = _default("idle_timeout")  # a stream whose source sends no frame for this long ends
    bitrate_kbps: int = _default("bitrate")
    metrics_public: bool = False  # /metrics without the token (a scraper on a trusted network)
    scenes_path: Path | None = None  # the show's scenes (JSON), read at start and written back when one is saved
    osc_port: int | None = None  # OSC control over UDP; off unless given
    osc_host: str = _default("osc_host")
    osc_allow: tuple[str, ...] = ()  # senders heard when OSC listens beyond localhost
    osc_send: tuple[tuple[str, int], ...] = ()  # (host, port) that get every stream's sound features as OSC
    record_dir: Path = _default("record_dir")  # recordings' folders go here
    record_min_free_bytes: int = round(_default("record_min_free") * 1e9)  # a recording needs this much free disk
    replica: str | None = None  # this server's Ray Serve replica id (`--replicas`), named in stats and /streams
    compile: bool = False  # the model's UNet and VAE decoder through torch.compile (pipelines/compiled.py)
    # The processing sizes (width, height) compiled at start; None: every ladder size of the page's camera.
    compile_sizes: tuple[tuple[int, int], ...] | None = None


# --- where the values come from -----------------------------------------------------------------------------------

_SPELLINGS = "settings_spellings"  # on the parsed arguments: a setting given by a deprecated spelling -> that spelling


def _flag(field: FieldInfo) -> Flag:
    return next((item for item in field.metadata if isinstance(item, Flag)), Flag())


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


class _DeprecatedSpelling(argparse.Action):
    """An old spelling of a flag: stores into the setting and remembers that it was used (warned once at start)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        spellings = getattr(namespace, _SPELLINGS, {})
        setattr(namespace, _SPELLINGS, {**spellings, self.dest: option_string})


class _Names(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def add_arguments(parser: argparse.ArgumentParser, names: Mapping[str, str] | None = None) -> None:
    """Every setting as a flag, and `--config FILE`. Flags that are not given stay out of the parsed arguments, so
    that the file and the environment can fill them. `names` fill the `{...}` in the help texts."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="read settings from this TOML file: keys are the flags' names with underscores (max_streams = 3); "
        f"flags win over {ENV_PREFIX}* variables, which win over the file",
    )
    for name, field in ServeSettings.model_fields.items():
        flag = _flag(field)
        default = field.default
        shown = (
            ""
            if default in (None, False, ())
            else f" (default {default:g})"
            if isinstance(default, float)
            else f" (default {default})"
        )
        described = (field.description or "").format_map(_Names(names or {})) + shown
        arguments: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": described}
        if field.annotation is bool:
            arguments["action"] = "store_true"
        else:
            arguments["metavar"] = flag.metavar or name.upper()
            if flag.repeatable:
                arguments["action"] = "append"
        parser.add_argument(option(name), **arguments)
        for spelling in flag.deprecated:
            parser.add_argument(
                spelling, dest=name, default=argparse.SUPPRESS, action=_DeprecatedSpelling, help=argparse.SUPPRESS
            )


def settings_from_arguments(args: argparse.Namespace) -> ServeSettings:
    """The settings from parsed arguments (`add_arguments`), the environment and the `--config` file; warns once
    for each deprecated spelling used."""
    given = {name: value for name, value in vars(args).items() if name in ServeSettings.model_fields}
    spellings: dict[str, str] = getattr(args, _SPELLINGS, {})
    for name, spelling in spellings.items():
        log.warning("%s is deprecated: use %s (it works the same)", spelling, option(name))
    return load_settings(given, getattr(args, "config", None), spellings)


def load_settings(
    given: Mapping[str, Any], config_file: Path | None = None, spellings: Mapping[str, str] | None = None
) -> ServeSettings:
    """The settings from, first to last: `given` (the command line), `LCMLIVE_*` variables, the config file, the
    defaults. SettingsError names the flag, the variable or the file of each value that cannot work."""
    layers: list[tuple[Callable[[str], str], Mapping[str, Any]]] = []
    if config_file is not None:
        layers.append((lambda name: f"{config_file}: {name} ({option(name)})", read_config_file(config_file)))
    layers.append((lambda name: f"{ENV_PREFIX}{name.upper()} ({option(name)})", EnvSettingsSource(ServeSettings)()))
    layers.append((lambda name: (spellings or {}).get(name, option(name)), given))
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for describe, layer in layers:
        for name, value in layer.items():
            values[name] = value
            where[name] = describe(name)
    try:
        return ServeSettings(**values)
    except ValidationError as error:
        raise SettingsError("\n".join(_problems(error, where))) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML file of settings: its keys must be settings' names (the flags' names with underscores)."""
    try:
        values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise SettingsError(f"--config {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SettingsError(f"--config {path}: not a TOML file: {error}") from None
    known = ServeSettings.model_fields
    # A key spelled as the flag is (dashes) or as an older flag was: say which key it should be.
    meant = {
        spelling.lstrip("-").replace("-", "_"): name for name, f in known.items() for spelling in _flag(f).deprecated
    }
    meant.update({name.replace("_", "-"): name for name in known})
    unknown = [key for key in values if key not in known]
    if unknown:
        names = ", ".join(f"{key!r}" + (f" ({meant[key]}?)" if key in meant else "") for key in unknown)
        raise SettingsError(f"{path}: unknown setting {names}; the keys are the flags' names with underscores")
    return values


def _problems(error: ValidationError, where: Mapping[str, str]) -> list[str]:
    """One line per setting that cannot work (pydantic may report several failed alternatives for one value)."""
    lines: dict[str, str] = {}
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else ""
        if name in lines:
            continue
        if name not in ServeSettings.model_fields:  # a rule across settings: its message names them
            lines[name or problem["msg"]] = str(problem.get("ctx", {}).get("error", problem["msg"]))
            continue
        lines[name] = f"{where.get(name, option(name))}{_wrong(name, problem)}"
    return list(lines.values())


def _wrong(name: str, problem: Mapping[str, Any]) -> str:
    """What follows the setting's name in its error line."""
    value = problem["input"]
    shown = value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else repr(value)
    if problem["type"] in ("greater_than", "greater_than_equal", "less_than_equal"):
        return f" must be {_range(ServeSettings.model_fields[name])}, got {shown}"
    if problem["type"] == "value_error":
        message = str(problem["ctx"]["error"])
        # This module's rules say what the setting takes; others' (the ControlNet kinds) say what is wrong.
        return f" {message}" if message.startswith("takes ") else f": {message}"

    return f": {problem['msg'][0].lower()}{problem['msg'][1:]}, got {value!r}"


def _range(field: FieldInfo) -> str:
    low = next((item.ge for item in field.metadata if isinstance(item, Ge)), None)
    high = next((item.le for item in field.metadata if isinstance(item, Le)), None)
    if low is not None and high is not None:
        return f"between {low:g} and {high:g}"
    if low is not None:
        return f"at least {low:g}"
    if any(isinstance(item, Gt) and item.gt == 0 for item in field.metadata):
        return "positive"
    return "in range"
