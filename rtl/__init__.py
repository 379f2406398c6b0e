"""The RTL: Amaranth components of the RNG PCI function and QEMU's debugcon (docs/rtl.md)."""
