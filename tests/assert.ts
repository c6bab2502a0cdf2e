/** Assertion helpers for Deno.test, built on node:assert/strict. */
import assert from "node:assert/strict";

export function assertEquals<T>(actual: T, expected: T, msg = "values differ"): void {
  assert.deepStrictEqual(actual, expected, msg);
}

/** Asserts that `fn` throws an instance of `cls` and returns the error. */
export function assertThrows(fn: () => unknown, cls: new (...a: never[]) => Error): Error {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e}`);
    return e as Error;
  }
  throw new assert.AssertionError({ message: `expected ${cls.name} to be thrown` });
}

/** Asserts |actual - expected| <= tol elementwise. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  what = "values",
): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let worst = 0, at = -1;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  assert.ok(
    worst <= tol,
    `${what}: max |diff| ${worst} at ${at} (${actual[at]} vs ${expected[at]}) > ${tol}`,
  );
}

/** max |a − b| / max |b|: relative to the values' scale, robust to entries near zero. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return scale === 0 ? diff : diff / scale;
}
