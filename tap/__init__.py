"""TAP devices: open, flags, offloads, vnet header, netns placement."""
