"""The bridge between stock QEMU 7.2 and our device backends (model or RTL under cocotb).

- `qbridge.proxy.protocol`: the x-pci-proxy-dev wire format (docs/bridge-protocol.md).
- `qbridge.server`: the device server (`python -m qbridge.server`).
- `qbridge.rtl.backend`: the same server running inside a cocotb simulation of the RTL.
- `qbridge.launch`, `qbridge.signoff`, `qbridge.image`: QEMU launcher, VM sign-off, guest image.
"""
