import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import { Adam } from "../lib/train/adam.ts";
import { ADAM_STEP } from "../lib/backends/seam.ts";
import { assertClose } from "./assert.ts";
import { countKernels, NO_WEBGPU, usedGpuBuffers, useWebgpu } from "./helpers/webgpu.ts";

// Reference: torch.optim.Adam (torch 1.13), tests/fixtures/adam/make_reference.py.
const ref = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/adam/reference.json", import.meta.url)),
) as { w0: number[]; grads: number[][]; traj: number[][] };

/** `n` variables of odd, mixed shapes with seeded values, and gradients for them. */
function problem(n: number, tag: string) {
  const shapes = Array.from(
    { length: n },
    (_, i) => [[7], [3, 5], [1, 1, 3, 9], [2, 3, 1, 4]][i % 4],
  );
  const vars = shapes.map((s, i) =>
    tf.variable(tf.randomNormal(s, 0, 1, "float32", i + 1), true, `${tag}/v${i}`)
  );
  const grads = (step: number) =>
    Object.fromEntries(
      vars.map((
        v,
        i,
      ) => [
        v.name,
        tf.randomNormal(v.shape, 0, 10 ** (step % 3 - 1), "float32", 100 * step + i + 1),
      ]),
    );
  return { vars, grads };
}

async function kernelsPerStep(n: number, tag: string): Promise<number> {
  const { vars, grads } = problem(n, tag);
  const adam = new Adam({ lr: 0.01 });
  const g = grads(1);
  adam.apply(vars, g); // creates the moments
  const { kernels } = await countKernels(() => adam.apply(vars, g));
  tf.dispose([...vars, ...Object.values(g)]);
  adam.dispose();
  return kernels;
}

Deno.test("Adam: a step's kernel count does not grow with the number of variables (cpu)", async () => {
  await tf.setBackend("cpu");
  const [few, many] = [await kernelsPerStep(2, "k2"), await kernelsPerStep(40, "k40")];
  assert.equal(few, many);
  assert.ok(few <= 16, `${few} kernels`);
});

Deno.test({
  name: "Adam on WebGPU: one AdamStep kernel, one dispatch, torch's trajectory, no leaks",
  ignore: NO_WEBGPU != null,
  async fn() {
    await useWebgpu();
    assert.ok(tf.getKernel(ADAM_STEP, "webgpu") != null);
    // torch.optim.Adam's trajectory, including an LR change.
    const w = tf.variable(tf.tensor2d(ref.w0, [3, 4]), true, "adam_gpu/w");
    const adam = new Adam({ lr: 0.001 });
    for (const [i, g] of ref.grads.entries()) {
      if (i === 3) adam.lr = 0.0001;
      const grad = tf.tensor2d(g, [3, 4]);
      adam.apply([w], { [w.name]: grad });
      grad.dispose();
      assertClose(await w.data(), ref.traj[i], 1e-6, `step ${i + 1}`);
    }
    adam.dispose();
    w.dispose();

    // Many variables: one kernel and one dispatch a step, and the same values as the composed
    // update on the cpu backend.
    const gpu = problem(37, "adam_gpu_many");
    const gpuAdam = new Adam({ lr: 0.01 });
    const count = await countKernels(() => gpuAdam.apply(gpu.vars, gpu.grads(0)));
    assert.deepEqual([count.kernels, count.dispatches], [1, 1], count.names.join(","));
    await tf.setBackend("cpu");
    const cpu = problem(37, "adam_cpu_many");
    const cpuAdam = new Adam({ lr: 0.01 });
    cpuAdam.apply(cpu.vars, cpu.grads(0));
    await useWebgpu();
    for (let step = 1; step < 4; step++) {
      gpuAdam.apply(gpu.vars, gpu.grads(step));
      await tf.setBackend("cpu");
      cpuAdam.apply(cpu.vars, cpu.grads(step));
      await useWebgpu();
    }
    for (const [i, v] of gpu.vars.entries()) {
      const expected = await cpu.vars[i].data();
      const scale = Math.max(...Array.from(expected, Math.abs));
      assertClose(await v.data(), expected, 1e-6 * scale, v.name);
    }

    // Leak test: tensors and GPU buffers stay flat over 20 steps.
    const before = [tf.memory().numTensors, usedGpuBuffers()];
    for (let step = 0; step < 20; step++) {
      const g = gpu.grads(step);
      gpuAdam.apply(gpu.vars, g);
      tf.dispose(Object.values(g));
    }
    await gpu.vars[0].data(); // submits the queue, releasing buffers freed while it was pending
    assert.deepEqual([tf.memory().numTensors, usedGpuBuffers()], before);
    gpuAdam.dispose();
    tf.dispose(gpu.vars);
    await tf.setBackend("cpu");
    cpuAdam.dispose();
    tf.dispose(cpu.vars);
  },
});
