// node:zlib for lib/data/dicom.ts in the browser: deflated DICOM (rare) needs a synchronous
// inflate the page does not have, so it is refused with one line, as an unsupported codec.
export function inflateRawSync() {
  throw new Error(
    "deflated DICOM is not supported in the viewer: use validate_model.ts --images, or convert it",
  );
}
