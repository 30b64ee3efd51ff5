"""Pretrained weights from the network: fail at once, with the way out, when offline.

Offline, the Hugging Face hub client retries every file for about a minute before it gives up,
and its message then says nothing about what to do; here an unreachable hub switches it to
offline mode (cached weights still load) and a miss becomes one line with the way out.
"""

from __future__ import annotations

import socket

from torch import nn

HUB_HOST = ("huggingface.co", 443)
TORCHVISION_HOST = ("download.pytorch.org", 443)
HUB_PROBE_S = 3.0  # how long to wait for a weights host before calling the machine offline


def hub_reachable(host: tuple[str, int] = HUB_HOST, timeout: float = HUB_PROBE_S) -> bool:
    """Whether a weights host answers a TCP connect (offline machines fail at once)."""
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def offline_error(arch: str, host: tuple[str, int], exc: Exception) -> ValueError:
    return ValueError(
        f"pretrained 'imagenet': {arch}'s ImageNet weights are not in the local cache "
        f"and {host[0]} cannot be reached ({type(exc).__name__}); use pretrained "
        "'none', or a weights file (a path: a camdrift checkpoint or a state dict)"
    )


def timm_pretrained(timm_name: str, kwargs: dict, arch: str) -> nn.Module:
    """``timm.create_model(pretrained=True)``: from the hub when it answers, else the cache."""
    import huggingface_hub.constants as hub
    import timm

    offline = hub.HF_HUB_OFFLINE or not hub_reachable()
    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = offline
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as exc:
        if not offline:
            raise
        raise offline_error(arch, HUB_HOST, exc) from None
    finally:
        hub.HF_HUB_OFFLINE = before


def torchvision_pretrained(name: str, arch: str) -> nn.Module:
    """torchvision's default weights (its own cache first); offline, the one-line error."""
    import torchvision

    try:
        return torchvision.models.get_model(name, weights="DEFAULT")
    except Exception as exc:
        if hub_reachable(TORCHVISION_HOST):
            raise
        raise offline_error(arch, TORCHVISION_HOST, exc) from None
