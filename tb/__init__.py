"""cocotb + pyuvm testbench of the RTL top (`build/rtl/cosim_top.v`).

Layers, bottom up:
- `timing`: idle and back-pressure patterns (per-cycle booleans, as cocotbext-axi's tests).
- agents on cocotb-bus, one file each, signal lists derived from `models.contract.transaction`:
  `request_driver`, `request_monitor`, `completion_monitor`, `console_monitor`.
- `rtl_endpoint.RtlEndpoint`: the `Endpoint` protocol over those agents, with idle and
  back-pressure patterns (the bridge has its own: `qbridge.rtl.lockstep_endpoint`,
  checked here by `cases_lockstep`).
- the pyuvm environment (`uvm_*` modules) and the cocotb test modules (`cases_*`).
- `regression` / `test_rtl.py`: build once per simulator and run the cases.
"""
