"""perf_split attributes each sample to the component whose frame is
nearest the thread's root by rule order: a malloc under curl is libcurl's,
under the ToolCalls handler latchkeyd's, and the reply written from the
completion callback grpc core's; the shares add up to the samples."""

import unittest

import perf_split

SCRIPT = """latchkeyd 
\tffffffff82200809 _raw_spin_unlock_irqrestore
\t          10aba4 __libc_send
\t           4f455 curl_multi_perform
\t          151858 forwarder_main
\t           891f4 start_thread

latchkeyd 
\t           a1b2c malloc
\t           b1b2c lk_scrubber_new
\t           c1b2c handle_call
\t           d1b2c lk_toolcalls_handle
\t           e1b2c worker_main
\t           891f4 start_thread

latchkeyd 
\t           a1b2c grpc_call_start_batch
\t           b1b2c send_final
\t           c1b2c on_vendor_done
\t           c1b2d finish_transfer
\t           d1b2c forwarder_main

latchkeyd 
\t           a1b2c lk_scrub
\t           c1b2c on_vendor_done
\t           d1b2c forwarder_main

latchkeyd 
\t           a1b2c grpc_core::ExecCtx::Flush
\t           b1b2c grpc_core::Executor::ThreadMain(void*)
\t           891f4 start_thread

latchkeyd 
\t           a1b2c [unknown]
"""


class PerfSplitTest(unittest.TestCase):

    def test_frames_are_read_leaf_first_per_sample(self):
        stacks = list(perf_split.parse(SCRIPT))
        self.assertEqual(len(stacks), 6)
        self.assertEqual(stacks[0][0], "_raw_spin_unlock_irqrestore")
        self.assertEqual(stacks[0][-1], "start_thread")
        self.assertEqual(stacks[4][1], "grpc_core::Executor::ThreadMain(void*)")

    def test_each_sample_goes_to_the_component_that_made_it(self):
        got = [perf_split.component(s)
               for s in perf_split.parse(SCRIPT)]
        self.assertEqual(got, [
            "libcurl: transfer (incl. its send/recv/poll syscalls)",
            "latchkeyd: call handling (lookups, unseal, inject, scrubber)",
            "grpc core: reply write (from the completion)",
            "latchkeyd: completion (scrub, result, audit)",
            "grpc core: server, transport, executor, timers",
            perf_split.OTHER])

    def test_rows_turn_shares_into_microseconds_per_call(self):
        total, counts = perf_split.count(perf_split.parse(SCRIPT))
        self.assertEqual(total, 6)
        rows = perf_split.rows(total, counts, 60.0)
        self.assertAlmostEqual(sum(r["share"] for r in rows), 1.0)
        self.assertAlmostEqual(sum(r["us_per_call"] for r in rows), 60.0)
        curl = [r for r in rows if r["component"].startswith(
            "libcurl: transfer")][0]
        self.assertAlmostEqual(curl["us_per_call"], 10.0)
        text = perf_split.render(total, rows, 60.0)
        self.assertIn("6 samples, 60.0 us per call", text)


if __name__ == "__main__":
    unittest.main()
