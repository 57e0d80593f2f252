"""TAP devices: open, flags, offloads, vnet header, netns placement."""
from tap.device import (POD_OFFLOADS, TUN_F_UDP_TUNNEL_GSO, UPLINK_OFFLOADS, UPLINK_VNET_HDR_LEN,
                        VNET_HDR_LEN, Tap, TapError, set_offloads)

__all__ = ["POD_OFFLOADS", "TUN_F_UDP_TUNNEL_GSO", "UPLINK_OFFLOADS", "UPLINK_VNET_HDR_LEN",
           "VNET_HDR_LEN", "Tap", "TapError", "set_offloads"]
