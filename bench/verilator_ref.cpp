// SPDX-License-Identifier: GPL-2.0
// Reference for the free-running RTL figure: the same cosim_top Verilog in a plain
// Verilator C++ loop, no cocotb, no VPI (bench/verilator_ref.py builds and runs it).
//
// usage: vref CYCLES   prints "VREF cycles=<n> seconds=<wall> cycles_per_s=<rate>"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "Vcosim_top.h"
#include "verilated.h"

int main(int argc, char **argv)
{
	const long long cycles = argc > 1 ? std::atoll(argv[1]) : 10000000LL;
	auto ctx = std::make_unique<VerilatedContext>();
	auto top = std::make_unique<Vcosim_top>(ctx.get());

	// Idle inputs, as the cocotb benchmark leaves them while free-running
	// (Verilator escapes "__" in port names as "___05F").
	top->req___05Fvalid = 0;
	top->cpl___05Fready = 1;
	top->con___05Fready = 1;
	top->rst = 1;
	for (int i = 0; i < 4; i++) {
		top->clk = 1;
		top->eval();
		top->clk = 0;
		top->eval();
	}
	top->rst = 0;

	const auto t0 = std::chrono::steady_clock::now();
	for (long long i = 0; i < cycles; i++) {
		top->clk = 1;
		top->eval();
		ctx->timeInc(5);  // 10 ns period, as the cocotb clock
		top->clk = 0;
		top->eval();
		ctx->timeInc(5);
	}
	const std::chrono::duration<double> wall = std::chrono::steady_clock::now() - t0;
	top->final();
	std::printf("VREF cycles=%lld seconds=%.6f cycles_per_s=%.0f\n", cycles,
		    wall.count(), cycles / wall.count());
	return 0;
}
