/**
 * Numbers and counts as people write them: `0.0003`, not the float noise
 * `0.00030000000000000003` that repeated multiplication leaves; `1 image`, `2 images`.
 * @module
 */

/** A float as its shortest text after rounding to 6 significant digits: 0.0003, 1e-7, 0.001. */
export function formatDecimal(x: number): string {
  return Number.isFinite(x) ? String(Number(x.toPrecision(6))) : String(x);
}

/** `n word` with an English plural: `1 image`, `28 images` (`plural` when irregular). */
export function plural(n: number, word: string, pluralWord = `${word}s`): string {
  return `${n} ${n === 1 ? word : pluralWord}`;
}
