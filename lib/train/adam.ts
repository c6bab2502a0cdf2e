/**
 * Adam with PyTorch's exact update (torch.optim.Adam, no weight decay, no amsgrad):
 * m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
 * p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε).
 * tfjs's AdamOptimizer places ε differently; owning the update keeps the numerics of the
 * original and makes the state easy to save and the learning rate easy to change.
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { type AdamStepAttrs, seam } from "../backends/seam.ts";

export interface AdamOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
}

/** Adam's state: step count, variable names in moment order, flat first and second moments. */
export interface AdamState {
  step: number;
  layout: string[];
  m: Float32Array | null;
  v: Float32Array | null;
}

/** Adam optimiser over named variables. */
export class Adam {
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  step = 0;
  // The moments of all variables live in two flat vectors, and a step costs the same few
  // kernels whatever the number of variables (per-kernel overhead dominates on WebGPU).
  #m: tf.Variable | null = null;
  #v: tf.Variable | null = null;
  #layout: string[] = [];

  constructor(opts: AdamOptions) {
    this.lr = opts.lr;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
  }

  /**
   * Applies one update to `variables` from `grads`, keyed by variable name as
   * `tf.variableGrads` returns them. Grads are not disposed. Every variable needs a gradient,
   * and the same variables must be passed at every step.
   */
  apply(variables: Iterable<tf.Variable>, grads: Record<string, tf.Tensor>): void {
    const vars = [...variables];
    const names = vars.map((v) => v.name);
    const missing = names.filter((n) => !grads[n]);
    if (missing.length) throw new Error(`Adam: no gradient for ${missing.join(", ")}`);
    const total = vars.reduce((n, v) => n + v.size, 0);
    if (!this.#m || !this.#v) {
      this.#m = tf.tidy(() => tf.variable(tf.zeros([total]), false));
      this.#v = tf.tidy(() => tf.variable(tf.zeros([total]), false));
      this.#layout = names;
    } else if (names.join("\n") !== this.#layout.join("\n")) {
      throw new Error("Adam: the variables changed between steps");
    }
    this.step++;
    const attrs: AdamStepAttrs = {
      beta1: this.beta1,
      beta2: this.beta2,
      eps: this.eps,
      stepSize: this.lr / (1 - this.beta1 ** this.step),
      sqrtBc2: Math.sqrt(1 - this.beta2 ** this.step),
    };
    const [m, v] = [this.#m, this.#v];
    tf.tidy(() => {
      const gs = vars.map((x) => grads[x.name]);
      const [ps, newM, newV] = seam().adamStep(vars, gs, m, v, attrs);
      vars.forEach((x, i) => x.assign(ps[i]));
      m.assign(newM);
      v.assign(newV);
    });
  }

  /** Step count and moments, for a resumable state file (null moments before the first step). */
  async getState(): Promise<AdamState> {
    const read = async (t: tf.Variable | null) => t && Float32Array.from(await t.data());
    return {
      step: this.step,
      layout: [...this.#layout],
      m: await read(this.#m),
      v: await read(this.#v),
    };
  }

  /** Restores what `getState` returned; the next `apply` continues exactly from there. */
  setState(state: AdamState): void {
    this.dispose();
    this.step = state.step;
    this.#layout = [...state.layout];
    if (state.m && state.v) {
      this.#m = tf.tidy(() => tf.variable(tf.tensor1d(state.m!), false));
      this.#v = tf.tidy(() => tf.variable(tf.tensor1d(state.v!), false));
    }
  }

  /** Frees the moment estimates. */
  dispose(): void {
    this.#m?.dispose();
    this.#v?.dispose();
    this.#m = this.#v = null;
  }
}
