"""Training checkpoints: one file that resumes a run exactly, written atomically, loaded without unpickling.

A checkpoint is a ``torch.save`` of plain containers (dicts, lists, strings, numbers and tensors only), so it
loads with ``torch.load(weights_only=True)``: a file from elsewhere cannot run code. It holds

========================  ==================================================================================
``format``                ``"slopekp.checkpoint/1"``
``kind``                  ``"stage2"`` or ``"stage3"``
``head``                  the pose head's name (``quaternion``, ``gramschmidt``, ``svd``, ``keypoints``)
``template_fingerprint``  :func:`slopekp.train.multiplex.template_fingerprint` of the template
``config``                the resolved config as YAML text
``manifest``              the run's :class:`slopekp.manifest.Manifest` as a dict
``model``                 ``model.state_dict()``
``optimizer``             ``optimizer.state_dict()``
``multiplex``             :meth:`CameraMultiplex.state_dict` (Stage II) or None
``epoch``, ``step``       the next epoch and the global step; ``batch_in_epoch`` batches of that epoch are done
``rng``                   ``{"torch": ByteTensor, "cuda": [ByteTensor, ...]}``
``metrics``               last logged losses (for model cards and ``slopekp info``)
``template``              Stage III: the template mesh itself (:func:`template_payload`), so that the model
                          loads where the template file is not
``card``                  Stage III: the model card (:func:`model_card`): the training data's name, path and
                          fingerprint, slopekp's version and the test split's metrics
========================  ==================================================================================
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from slopekp.utils import atomic_write, first_line

CHECKPOINT_FORMAT = "slopekp.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, foreign, or made for another head, template or stage."""


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CPU and every CUDA device) as tensors."""
    cuda = [s.cpu() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def template_payload(template) -> dict[str, Any]:
    """A :class:`slopekp.mesh.Template` as plain tensors for a checkpoint (loads with ``weights_only=True``)."""
    return {"name": template.name, "verts": template.verts.detach().cpu(), "faces": template.faces.detach().cpu(),
            "verts_uv": template.verts_uv.detach().cpu()}  # fmt: skip


def template_from_payload(payload: Any, path: str | os.PathLike):
    """The :class:`slopekp.mesh.Template` of :func:`template_payload`; ``path`` (the checkpoint) names the file in
    errors.

    Raises:
        CheckpointError: the entry is not a template (missing arrays, bad shapes or values).
    """
    from slopekp.mesh import Template

    if not isinstance(payload, dict) or not all(isinstance(payload.get(k), torch.Tensor)
                                                for k in ("verts", "faces", "verts_uv")):  # fmt: skip
        raise CheckpointError(f"{path}: the checkpoint's template entry is not a mesh (verts, faces, verts_uv)")
    try:
        return Template(payload["verts"], payload["faces"], payload["verts_uv"], str(payload.get("name", "")))
    except ValueError as e:
        raise CheckpointError(f"{path}: the checkpoint's template is damaged: {e}") from e


def model_card(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint says about itself, for people (``slopekp info``) and for predict's outputs.

    Works for every checkpoint of :data:`CHECKPOINT_FORMAT`; entries an older file lacks are absent or None.
    """
    manifest = ckpt.get("manifest") if isinstance(ckpt.get("manifest"), dict) else {}
    card = ckpt.get("card") if isinstance(ckpt.get("card"), dict) else {}
    tpl = ckpt.get("template") if isinstance(ckpt.get("template"), dict) else None
    cfg_tpl = manifest.get("inputs", {}).get("template", {})
    template = {"path": cfg_tpl.get("path"), "fingerprint": ckpt.get("template_fingerprint"),
                "embedded": tpl is not None}  # fmt: skip
    if tpl is not None and isinstance(tpl.get("verts"), torch.Tensor) and isinstance(tpl.get("faces"), torch.Tensor):
        template.update(num_verts=int(tpl["verts"].shape[0]), num_faces=int(tpl["faces"].shape[0]))
    data = card.get("data") or {k: v for k, v in manifest.get("inputs", {}).get("data", {}).items()}
    return {
        "kind": ckpt.get("kind"),
        "head": ckpt.get("head"),
        "targets": ckpt.get("targets"),
        "template": template,
        "data": data,
        "trained": {"epochs": ckpt.get("epoch"), "steps": ckpt.get("step")},
        "slopekp_version": card.get("slopekp_version", manifest.get("version")),
        "created": manifest.get("created"),
        "command": manifest.get("command"),
        "metrics": card.get("metrics"),
        "last_losses": ckpt.get("metrics"),
    }


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (the table above, without ``format``) atomically to ``path``."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    head: str | None = None,
    template_fingerprint: str | None = None,
    map_location: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check what it is for.

    Args:
        kind, head, template_fingerprint: when given, the checkpoint must match them.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: naming the file: truncated or corrupt, not a slopekp checkpoint (or holding objects
            that would need unpickling), or made for another stage, head or template.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: not a slopekp checkpoint (it holds objects that would need unpickling, which is refused): "
            f"{str(e).splitlines()[0]}"
        ) from e
    except Exception as e:  # a damaged file breaks the reader in many ways (EOFError, KeyError, RuntimeError ...)
        detail = first_line(e)
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {detail})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a slopekp checkpoint (format {got!r}, expected {CHECKPOINT_FORMAT!r})")
    for key, want in (("kind", kind), ("head", head), ("template_fingerprint", template_fingerprint)):
        if want is not None and ckpt.get(key) != want:
            what = {"kind": "stage", "head": "pose head", "template_fingerprint": "template (fingerprint)"}[key]
            raise CheckpointError(f"{path}: checkpoint is for {what} {ckpt.get(key)!r}, expected {want!r}")
    return ckpt
