/**
 * bench/step_profile.ts on a small DenseNet-121 run (batch 2, 64 px, one profiled step): its
 * parts add up to the step's wall time, none is negative (oneDNN calls and nested kernels
 * attributed to the kernel they ran in), every convolution kernel reached oneDNN once, and the
 * BatchNorm kernels and the bandwidth passes report positive GB/s. Also: the oneDNN wrappers and
 * the kernel tracker put the instance's and the engine's own methods back.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import { nativeMissingFor } from "./helpers/native.ts";
import { runScript } from "./helpers/scripts.ts";
import { openOneDnn } from "../lib/backends/native/native_kernels.ts";
import { recordOneDnnCalls } from "../bench/onednn_calls.ts";
import { trackKernels } from "../bench/kernel_frames.ts";
import { initBackend } from "../lib/backends/backend.ts";

const nativeMissing = nativeMissingFor("the step profile tests");
// bf16 where the CPU has it: that run also calls convertBf16.
const precision = nativeMissing == null && openOneDnn().bf16Instructions ? "bf16" : "f32";

interface Part {
  calls: number;
  ms: number;
  self_ms: number;
  gbps?: number;
}

Deno.test({
  name: `step_profile.ts (${precision}): the parts add up and match the step's kernels`,
  ignore: nativeMissing != null,
  async fn() {
    const run = await runScript(
      "bench/step_profile.ts",
      [
        ...["--precision", precision, "--batch", "2", "--image_size", "64", "--steps", "1"],
        ...["--standalone_reps", "1", "--bandwidth_mb", "16"],
      ],
      [],
      { timeoutMs: 120_000 },
    );
    assert.equal(run.code, 0, run.stderr);
    const out = JSON.parse(run.stdout.trim().split("\n").pop()!);
    assert.equal(out.precision, precision);
    assert.match(run.stderr, /## Training step .*\n[\s\S]*\| \*\*step wall time\*\* \|/);
    for (const kind of ["train", "infer"]) {
      const r = out[kind];
      const kernels = r.kernels as Record<string, Part>;
      const onednn = r.onednn as Record<string, Part>;
      const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
      const parts = sum(Object.values(onednn).map((m) => m.ms)) +
        sum(Object.values(kernels).map((k) => k.self_ms));
      // Rounded to 0.01 ms a part: the sum is the wall time less the remainder.
      const slack = 0.01 * (Object.keys(kernels).length + Object.keys(onednn).length + 1);
      assert.ok(Math.abs(parts + r.remainder_ms - r.wall_ms) <= slack, `${kind}: ${parts}`);
      assert.ok(parts <= r.wall_ms + slack, `${kind}: parts ${parts} > wall ${r.wall_ms}`);
      for (const [name, k] of Object.entries(kernels)) {
        assert.ok(k.self_ms >= -0.05, `${kind}: ${name} self ${k.self_ms} ms`);
      }
      const calls = (...names: string[]) =>
        sum(
          Object.entries(kernels).filter(([n]) => names.includes(n.split(" (")[0])).map(([, k]) =>
            k.calls
          ),
        );
      assert.ok(onednn.convForward.calls > 0);
      assert.equal(onednn.convForward.calls, calls("Conv2D", "FusedConv2D"), kind);
      if (kind === "train") {
        assert.equal(onednn.convBackwardData.calls, calls("Conv2DBackpropInput"));
        assert.equal(onednn.convBackwardWeights.calls, calls("Conv2DBackpropFilter"));
        assert.ok(kernels.BatchNormReluConcatGrad.gbps! > 0);
        assert.ok(
          calls("AdamStep") > 0 || Object.keys(kernels).some((n) => n.endsWith("(optimizer)")),
        );
      } else {
        assert.equal(onednn.convBackwardData, undefined);
      }
      if (precision === "bf16") {
        // Each forward but the stem's (3 channels: float32) rounds its x; a backward's dy is
        // rounded once for both gradients.
        assert.ok(onednn.convertBf16.calls >= onednn.convForward.calls - 1, kind);
      } else {
        assert.equal(onednn.convertBf16, undefined);
      }
      for (
        const s of Object.values(r.standalone_convs) as ({ standalone_gflops: number } | null)[]
      ) {
        if (s != null) assert.ok(s.standalone_gflops > 0);
      }
    }
    assert.equal(out.bandwidth.length, 6);
    for (const b of out.bandwidth) assert.ok(b.gbps > 0, JSON.stringify(b));
  },
});

Deno.test({
  name: "the oneDNN call recorder and the kernel tracker restore what they wrapped",
  ignore: nativeMissing != null,
  async fn() {
    const dnn = openOneDnn();
    const src = new Float32Array(4096).fill(1.5);
    const dst = new Uint16Array(4096);
    const at = (a: ArrayBufferView) => Deno.UnsafePointer.of(a);
    const frame = { index: 7 };
    const recorder = recordOneDnnCalls(dnn, () => frame);
    assert.throws(() => recordOneDnnCalls(dnn, () => null), /already wrapped/);
    dnn.convertBf16(src.length, at(src), at(dst));
    recorder.restore();
    dnn.convertBf16(src.length, at(src), at(dst));
    assert.equal(recorder.calls.length, 1);
    assert.equal(recorder.calls[0].method, "convertBf16");
    assert.equal(recorder.calls[0].bytes, src.length * 6);
    assert.equal(recorder.calls[0].kernel, frame);
    assert.equal(dst[0], 0x3fc0); // 1.5 in bfloat16: the call itself still ran
    assert.ok(!Object.hasOwn(dnn, "convertBf16"));

    await initBackend("cpu"); // the engine's profiler comes with a backend
    const tracker = trackKernels();
    assert.throws(() => trackKernels(), /already tracked/);
    tracker.restore();
    const profiler = (tf.engine() as unknown as { profiler: object }).profiler;
    assert.ok(!Object.hasOwn(profiler, "profileKernel"));
  },
});
