/**
 * A minimal XML well-formedness checker and element tree for tests of generated SVG/XHTML:
 * balanced tags, quoted and unique attributes, valid entity references, no stray `<` or `&`,
 * one root element. Deno has no DOMParser; this avoids a new npm dependency.
 */

/** One element of the parsed tree. */
export interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  /** Concatenated text directly inside this element (entities decoded). */
  text: string;
  parent: XmlElement | null;
}

const ENTITY = /^&(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);/;
const NAME = /^[A-Za-z_:][-A-Za-z0-9_:.]*/;

function decode(s: string): string {
  return s.replace(/&(amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);/g, (_, e: string) => {
    switch (e) {
      case "amp":
        return "&";
      case "lt":
        return "<";
      case "gt":
        return ">";
      case "quot":
        return '"';
      case "apos":
        return "'";
    }
    return String.fromCodePoint(e[1] === "x" ? parseInt(e.slice(2), 16) : parseInt(e.slice(1)));
  });
}

function checkText(s: string, at: number): void {
  for (let i = s.indexOf("&"); i >= 0; i = s.indexOf("&", i + 1)) {
    if (!ENTITY.test(s.slice(i))) throw new Error(`bad entity reference at ${at + i}`);
  }
}

/**
 * Parses `src` as XML (an `<?xml?>` declaration, comments and one `<!DOCTYPE …>` allowed) and
 * returns the root element; throws an Error naming the offset of the first problem.
 */
export function parseXml(src: string): XmlElement {
  const doc: XmlElement = { name: "#document", attrs: {}, children: [], text: "", parent: null };
  let cur = doc;
  let i = 0;
  while (i < src.length) {
    const lt = src.indexOf("<", i);
    const text = src.slice(i, lt < 0 ? src.length : lt);
    checkText(text, i);
    if (cur === doc) {
      if (text.trim() !== "") throw new Error(`text outside the root element at ${i}`);
    } else cur.text += decode(text);
    if (lt < 0) break;
    i = lt;
    if (src.startsWith("<?", i)) {
      const end = src.indexOf("?>", i);
      if (end < 0) throw new Error(`unterminated processing instruction at ${i}`);
      i = end + 2;
    } else if (src.startsWith("<!--", i)) {
      const end = src.indexOf("-->", i);
      if (end < 0) throw new Error(`unterminated comment at ${i}`);
      i = end + 3;
    } else if (src.startsWith("<!DOCTYPE", i)) {
      if (cur !== doc || doc.children.length > 0) throw new Error(`misplaced DOCTYPE at ${i}`);
      const end = src.indexOf(">", i);
      i = end + 1;
    } else if (src.startsWith("</", i)) {
      const m = NAME.exec(src.slice(i + 2));
      if (!m) throw new Error(`bad end tag at ${i}`);
      if (m[0] !== cur.name) throw new Error(`</${m[0]}> at ${i} closes <${cur.name}>`);
      const end = src.indexOf(">", i);
      if (src.slice(i + 2 + m[0].length, end).trim() !== "") {
        throw new Error(`junk in end tag at ${i}`);
      }
      cur = cur.parent!;
      i = end + 1;
    } else {
      const m = NAME.exec(src.slice(i + 1));
      if (!m) throw new Error(`bad start tag at ${i}`);
      if (cur === doc && doc.children.length > 0) throw new Error(`second root element at ${i}`);
      const el: XmlElement = { name: m[0], attrs: {}, children: [], text: "", parent: cur };
      let j = i + 1 + m[0].length;
      for (;;) {
        const ws = /^\s*/.exec(src.slice(j))![0].length;
        j += ws;
        if (src.startsWith("/>", j)) {
          cur.children.push(el);
          j += 2;
          break;
        }
        if (src[j] === ">") {
          cur.children.push(el);
          cur = el;
          j += 1;
          break;
        }
        if (ws === 0) throw new Error(`missing space before attribute at ${j}`);
        const a = /^([A-Za-z_:][-A-Za-z0-9_:.]*)\s*=\s*(?:"([^"<]*)"|'([^'<]*)')/.exec(
          src.slice(j),
        );
        if (!a) throw new Error(`bad attribute at ${j}: ${src.slice(j, j + 30)}`);
        if (a[1] in el.attrs) throw new Error(`duplicate attribute ${a[1]} at ${j}`);
        const raw = a[2] ?? a[3];
        checkText(raw, j);
        el.attrs[a[1]] = decode(raw);
        j += a[0].length;
      }
      i = j;
    }
  }
  if (cur !== doc) throw new Error(`<${cur.name}> is never closed`);
  if (doc.children.length !== 1) throw new Error("expected exactly one root element");
  const root = doc.children[0];
  root.parent = null;
  return root;
}

/** All elements under `root` (itself included) matching `pred`, in document order. */
export function findAll(root: XmlElement, pred: (e: XmlElement) => boolean): XmlElement[] {
  const out: XmlElement[] = [];
  const walk = (e: XmlElement) => {
    if (pred(e)) out.push(e);
    e.children.forEach(walk);
  };
  walk(root);
  return out;
}

/** True when `e` has `cls` among its classes. */
export function hasClass(e: XmlElement, cls: string): boolean {
  return (e.attrs.class ?? "").split(/\s+/).includes(cls);
}

/** All text inside `e`, its descendants included. */
export function allText(e: XmlElement): string {
  return e.text + e.children.map(allText).join("");
}
