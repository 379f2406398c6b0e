// SPDX-License-Identifier: BSD-3-Clause
// cocotb's Verilator main loop (cocotb 2.1 share/lib/verilator/verilator.cpp, Copyright
// cocotb contributors, Revised BSD License) with the clock of the lean build toggled
// here, in C++, instead of by a VPI timed callback per half period (GPI clock) or by
// Verilator's --timing scheduler (HDL `always #`): tb/build.py builds the lean wrapper
// with -DCOSIM_EXTERNAL_CLOCK and this file for Verilator.  Waves and coverage options of
// the original are dropped except the trace (built with --trace-fst for waves).
//
// Compile-time parameter: COSIM_HALF_PERIOD, the clock's half period in simulation
// precision units (tb/build.py: 5000 for 10 ns at 1 ps).  Rising edges are at odd half
// periods, as the wrapper's own HDL clock (first rising edge at one half period).

#include <algorithm>
#include <memory>

#include "Vtop.h"
#include "verilated.h"
#include "verilated_vpi.h"

#if VM_TRACE
#include <verilated_fst_c.h>
static VerilatedFstC *tfp;
#endif

#ifndef COSIM_HALF_PERIOD
#error "COSIM_HALF_PERIOD (the clock's half period in precision units) must be defined"
#endif

static vluint64_t main_time = 0;  // simulation time, in precision units

double sc_time_stamp() { return main_time; }

extern "C" {
void vlog_startup_routines_bootstrap(void);
}

static inline void settle_value_callbacks()
{
	// Value change callbacks may write signals: repeat until nothing changes.
	while (VerilatedVpi::callValueCbs()) {
	}
}

static const vluint64_t NO_DEADLINE = ~0ULL;

// True when no callback but a timed one is registered: no value change, read-write or
// read-only callback, no pending VPI write.  (cbNextSimTime callbacks waiting in
// Verilator's next-time queue cannot be seen from here; cocotb registers them only for
// `NextTimeStep`, which the lean path does not use: such a wait would end at the next
// timed callback instead of the next time step.)
static inline bool idle()
{
	return !VerilatedVpi::hasCbs(cbValueChange) && !VerilatedVpi::hasCbs(cbReadWriteSynch) &&
	       !VerilatedVpi::hasCbs(cbReadOnlySynch) && !VerilatedVpi::hasCbs(cbNextSimTime) &&
	       !VerilatedVpi::evalNeeded();
}

static void wrap_up()
{
	VerilatedVpi::callCbs(cbEndOfSimulation);
#if VM_TRACE
	if (tfp)
		tfp->close();
#endif
}

int main(int argc, char **argv)
{
	Verilated::commandArgs(argc, argv);
	std::unique_ptr<Vtop> top(new Vtop(""));
	Verilated::fatalOnVpiError(false);  // as cocotb's main: systemtf errors
#if VM_TRACE
	bool trace = false;
	for (int i = 1; i < argc; i++)
		if (std::string(argv[i]) == "--trace")
			trace = true;
	if (trace) {
		Verilated::traceEverOn(true);
		tfp = new VerilatedFstC;
		top->trace(tfp, 99);
		tfp->open("dump.fst");
	}
#endif
	top->clk = 0;
	vlog_startup_routines_bootstrap();
	Verilated::addExitCb([](void *) { wrap_up(); }, nullptr);
	VerilatedVpi::callCbs(cbStartOfSimulation);
	settle_value_callbacks();

	vluint64_t next_edge = COSIM_HALF_PERIOD;
	while (!Verilated::gotFinish()) {
		do {
			do {
				top->eval_step();
				VerilatedVpi::clearEvalNeeded();
				VerilatedVpi::doInertialPuts();
				settle_value_callbacks();
			} while (VerilatedVpi::evalNeeded());
			VerilatedVpi::callCbs(cbReadWriteSynch);
			VerilatedVpi::doInertialPuts();
			settle_value_callbacks();
		} while (VerilatedVpi::evalNeeded());
		top->eval_end_step();
		VerilatedVpi::callCbs(cbReadOnlySynch);
#if VM_TRACE
		if (tfp)
			tfp->dump(main_time);
#endif
		const vluint64_t deadline = VerilatedVpi::cbNextDeadline();
		if (idle()) {
			// Nothing but a timed callback can wake cocotb (a `Timer` wait, e.g. the
			// free-running bench): run the clock alone up to it.  With no timed
			// callback either, nothing can ever happen again: end, as cocotb's main
			// does when no events are left (cocotb reports the premature end).
			if (deadline == NO_DEADLINE)
				break;
			while (next_edge < deadline && !Verilated::gotFinish()) {
				main_time = next_edge;
				next_edge += COSIM_HALF_PERIOD;
				top->clk = !top->clk;
				top->eval();
#if VM_TRACE
				if (tfp)
					tfp->dump(main_time);
#endif
			}
		}
		// The clock always runs: the next time step is the next clock edge or cocotb's
		// next timed callback, whichever comes first.
		main_time = std::min<vluint64_t>(deadline, next_edge);
		VerilatedVpi::callCbs(cbNextSimTime);
		settle_value_callbacks();
		if (main_time == next_edge) {
			top->clk = !top->clk;
			next_edge += COSIM_HALF_PERIOD;
		}
		VerilatedVpi::callTimedCbs();
		settle_value_callbacks();
	}
	top->final();
	wrap_up();
#if VM_TRACE
	delete tfp;
	tfp = nullptr;
#endif
	return Verilated::threadContextp()->errorCount() > 0 ? 1 : 0;
}
