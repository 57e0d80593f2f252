"""TAP devices: open, flags, offloads, vnet header, netns placement."""
from tap.device import POD_OFFLOADS, VNET_HDR_LEN, Tap, TapError, set_offloads

__all__ = ["POD_OFFLOADS", "VNET_HDR_LEN", "Tap", "TapError", "set_offloads"]
