/**
 * Spatial sizes through a torchvision DenseNet: conv0 (7×7, stride 2, pad 3), pool0 (3×3,
 * stride 2, pad 1), and a 2×2 average pool in each transition (floor, as torch).
 * @module
 */

/** `[h, w]` of the last feature map for a square `imageSize` input and `blocks` dense blocks. */
export function featureMapSize(imageSize: number, blocks: number): [number, number] {
  let s = Math.floor((imageSize + 2 * 3 - 7) / 2) + 1;
  s = Math.floor((s + 2 * 1 - 3) / 2) + 1;
  for (let t = 1; t < blocks; t++) s = Math.floor(s / 2);
  return [s, s];
}
