"""Where a model's weights come from: the official checkpoint, a local file, or a seed.

Every source ends in a :class:`WeightsInfo` that the registry records, so each
registered version (and each mask made with it) can be traced to exact bytes.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from components.errors import InputError, IntegrityError, ServiceError
from components.io.files import cache_dir as s2sam_cache_dir
from components.io.files import file_sha256
from components.io.network import NetworkOptions, redact, with_retries
from model_export.architectures import SamArchitecture, build_sam

if TYPE_CHECKING:
    from segment_anything.modeling import Sam


@dataclass(frozen=True)
class OfficialCheckpoint:
    """A published checkpoint, and its known digest and size.

    ``sha256`` is ``None`` where the publisher gives none (SAM 2): the download is then
    checked against the server's length, and the caller loads it strictly.
    """

    url: str
    sha256: str | None
    size: int
    """Bytes, for the progress line (0: unknown)."""


OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    "vit_b": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        375_042_383,
    ),
    "vit_l": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        1_249_524_607,
    ),
    "vit_h": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        2_564_550_879,
    ),
}

WeightsKind = Literal["official", "checkpoint", "random"]


@dataclass(frozen=True)
class WeightsInfo:
    """What the registry records about a model's weights."""

    kind: WeightsKind
    source: str
    """URL, local path, or ``seed=N``."""
    sha256: str | None
    """Digest of the checkpoint file; ``None`` for random weights."""
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return asdict(self)


ProgressFn = Callable[[int, int], None]


def _stderr_progress(done: int, total: int) -> None:
    pct = 100.0 * done / total if total else 0.0
    end = "\n" if done >= total else ""
    print(
        f"\rdownloading checkpoint: {done >> 20} / {total >> 20} MiB ({pct:.0f}%)",
        end=end,
        file=sys.stderr,
        flush=True,
    )


def _fetch_into(
    official: OfficialCheckpoint, part: Path, timeout: float, progress: ProgressFn | None
) -> None:
    """One attempt: append to ``part`` from where it ends (HTTP range), to the end.

    A body shorter than the server's ``Content-Length`` is an error (retried), so a
    checkpoint without a published digest is never taken from a cut connection.
    """
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(official.url)
    if done:
        request.add_header("Range", f"bytes={done}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if done and response.status != 206:  # server ignored the range: start over
            done = 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else None
        with open(part, "ab" if done else "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total or official.size)
    if total is not None and done != total:  # the connection closed early
        raise ConnectionError(f"got {done} of {total} bytes")


def download_checkpoint(
    official: OfficialCheckpoint,
    cache_dir: Path,
    *,
    timeout: float = NetworkOptions.timeout_s,
    retries: int = 5,
    progress: ProgressFn | None = _stderr_progress,
) -> Path:
    """Fetch an official checkpoint into the cache, resuming partial downloads.

    The file is verified against its known sha256 before it is moved into place;
    a cached file is trusted only after the same check. A mismatch deletes the
    partial file so the next attempt starts clean.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = official.url.rsplit("/", 1)[-1]
    final = cache_dir / name
    if final.exists():
        if official.sha256 is None or file_sha256(final) == official.sha256:
            return final
        final.unlink()
    part = cache_dir / f"{name}.part"

    def attempt() -> None:
        _fetch_into(official, part, timeout, progress)

    def give_up(err: BaseException, attempts: int) -> ServiceError:
        return ServiceError(
            f"could not download {official.url} after {attempts} attempts: {redact(str(err))}"
        )

    network = NetworkOptions(timeout_s=timeout, retries=max(0, retries - 1), backoff_s=1.0)
    with_retries(attempt, network, f"download of {official.url}", give_up=give_up)
    digest = file_sha256(part)
    if official.sha256 is not None and digest != official.sha256:
        part.unlink()
        raise IntegrityError(
            f"downloaded {official.url} has sha256 {digest}, expected {official.sha256}; "
            "the partial file was removed, try again"
        )
    part.replace(final)
    return final


def read_state_dict(path: Path) -> dict[str, Any]:
    """A checkpoint file's tensors, never pickled code; errors name the file.

    The official SAM 2 files wrap the state dict in a ``model`` key: unwrapped.
    """
    import torch

    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise InputError(f"checkpoint {path} is not a readable PyTorch checkpoint: {err}") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return state


def check_fits(state: dict[str, Any], expected: dict[str, Any], path: Path, name: str) -> None:
    """Every tensor of the model in the checkpoint, with its shape, and nothing else."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        details = []
        if wrong:
            k = wrong[0]
            details.append(
                f"{len(wrong)} tensors have other shapes (e.g. {k}: checkpoint "
                f"{tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
            )
        if missing:
            details.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        raise InputError(
            f"checkpoint {path} does not fit model type {name!r}: " + "; ".join(details)
        )


def load_checkpoint(path: Path, arch: SamArchitecture) -> Sam:
    """Build ``arch`` and load a checkpoint file into it (tensors only, never pickled code)."""
    state = read_state_dict(path)
    sam = build_sam(arch)
    check_fits(state, sam.state_dict(), path, arch.name)
    sam.load_state_dict(state)
    sam.eval()
    return sam


def random_sam(arch: SamArchitecture, seed: int) -> Sam:
    """``arch`` with seeded random weights: the real compute, for tests and benchmarks.

    Initialisation runs on a private generator state, so a seed gives the same
    weights whatever the caller did to torch's global RNG before.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(arch)
        # segment_anything leaves some embeddings at their init; perturb everything a
        # little so no parameter is a constant and every code path is exercised.
        with torch.no_grad():
            for p in sam.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    sam.eval()
    return sam


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from.

    The official checkpoint (nothing given), a local checkpoint, or seeded random
    weights (tests and benchmarks).
    """

    checkpoint: Path | None = None
    random_weights: bool = False
    seed: int | None = None

    def checked_seed(self) -> int | None:
        """The seed of random weights, ``None`` for a file; contradictions refused."""
        if self.random_weights:
            if self.checkpoint is not None:
                raise InputError("give either a checkpoint or --random-weights, not both")
            if self.seed is None:
                raise InputError("--random-weights needs --seed N so the weights are reproducible")
            return self.seed
        if self.seed is not None:
            raise InputError("--seed only applies with --random-weights")
        return None

    @classmethod
    def from_parameters(cls, checkpoint: str, random_weights: bool, seed: int) -> WeightsSource:
        """From Kubeflow parameters, where "" and a seed without random weights mean unset."""
        return cls(
            checkpoint=Path(checkpoint) if checkpoint else None,
            random_weights=random_weights,
            seed=seed if random_weights else None,
        )


def resolve_weights(
    arch: SamArchitecture, source: WeightsSource | None = None, cache_dir: Path | None = None
) -> tuple[Sam, WeightsInfo]:
    """Load the model from exactly one weights source and describe that source."""
    source = source or WeightsSource()
    checkpoint, seed = source.checkpoint, source.checked_seed()
    if seed is not None:
        return random_sam(arch, seed), WeightsInfo("random", f"seed={seed}", None, seed)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser().resolve()
        sam = load_checkpoint(path, arch)
        return sam, WeightsInfo("checkpoint", str(path), file_sha256(path))
    official = OFFICIAL_CHECKPOINTS.get(arch.name)
    if official is None:
        raise InputError(
            f"model type {arch.name!r} has no published checkpoint: give --checkpoint PATH "
            "or --random-weights --seed N"
        )
    path = download_checkpoint(official, (cache_dir or s2sam_cache_dir()) / "checkpoints")
    return load_checkpoint(path, arch), WeightsInfo("official", official.url, official.sha256)
