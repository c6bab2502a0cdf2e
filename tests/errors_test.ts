import assert from "node:assert/strict";
import { addErrorExplainer, explainError, printable, UserError } from "../lib/util/errors.ts";

Deno.test("explainError: the first explainer's clearer error replaces the bare one", async () => {
  const bare = new Error("validation error occurred");
  // Nothing registered for this message yet: the error itself (non-Errors become Errors).
  assert.equal(await explainError(bare), bare);
  assert.equal((await explainError("text")).message, "text");
  addErrorExplainer(() => Promise.reject(new Error("an explainer that fails is skipped")));
  const explain = (e: Error) =>
    Promise.resolve(
      e.message === "validation error occurred" ? new UserError("the GPU was lost") : null,
    );
  addErrorExplainer(explain);
  addErrorExplainer(explain); // once only
  const clear = await explainError(bare);
  assert.ok(clear instanceof UserError);
  assert.equal(clear.message, "the GPU was lost");
  const other = new Error("something else");
  assert.equal(await explainError(other), other);
});

Deno.test("printable: control characters and long names made safe for one line", () => {
  assert.equal(printable("a\nb\x1b[31m"), "a?b?[31m");
  assert.equal(printable("x".repeat(300)).length, 201);
});
