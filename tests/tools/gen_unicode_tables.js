#!/usr/bin/env node
// gen_unicode_tables.js: writes inference/unicode_tables.c, the Unicode data the tokenizer's
// hand-written pre-tokenizer matchers and NFC normalizer need, taken from this node's own Unicode
// data so that it agrees with the reference implementation the parity test runs
// (@huggingface/tokenizers, whose regexes run on node's RegExp engine):
//   - \p{L}, \p{N} and \p{White_Space} (what Oniguruma's and tokenizers.js's \s mean) as sorted
//     code point ranges;
//   - NFC data: full canonical decompositions (from String.prototype.normalize("NFD")), a canonical
//     combining class *rank* per non-starter (the order of the real classes, recovered by asking
//     normalize("NFD") to reorder pairs, since JS does not expose the numbers), and the primary
//     composition pairs. The script then runs the same NFC algorithm in JS on the tables it wrote
//     and checks it against normalize("NFC") for every code point and many sequences.
// Usage: node tests/tools/gen_unicode_tables.js > inference/unicode_tables.c
'use strict';

const MAX = 0x10ffff;
const isSurrogate = (c) => c >= 0xd800 && c <= 0xdfff;
const chr = (c) => String.fromCodePoint(c);
const cps = (s) => Array.from(s, (ch) => ch.codePointAt(0));

function ranges(re) {
  const out = [];
  let start = -1;
  for (let c = 0; c <= MAX + 1; c++) {
    const inSet = c <= MAX && !isSurrogate(c) && re.test(chr(c));
    if (inSet && start < 0) start = c;
    if (!inSet && start >= 0) { out.push([start, c - 1]); start = -1; }
  }
  return out;
}

const letter = ranges(/^\p{L}$/u);
const number = ranges(/^\p{N}$/u);
const space = ranges(/^\p{White_Space}$/u);

// --- NFC data ---------------------------------------------------------------------------------
const HANGUL_S = 0xac00, HANGUL_COUNT = 11172;
const isHangulSyllable = (c) => c >= HANGUL_S && c < HANGUL_S + HANGUL_COUNT;

// Non-starters: code points without decomposition that get reordered behind U+0334 (ccc 1) when
// they precede it (ccc > 1), or that move with it in front of U+0301 (ccc 230) (ccc == 1).
const nonStarters = [];
for (let c = 0; c <= MAX; c++) {
  if (isSurrogate(c)) continue;
  const s = chr(c);
  if (s.normalize('NFD') !== s) continue;
  const gt1 = (s + '\u0334').normalize('NFD') === '\u0334' + s;
  const eq1 = !gt1 && ('\u0301' + s + '\u0334').normalize('NFD') === s + '\u0334\u0301';
  if (gt1 || eq1) nonStarters.push(c);
}
// Order them by class: a before b when NFD(b a) puts a first.
const before = (a, b) => (chr(b) + chr(a)).normalize('NFD') === chr(a) + chr(b);
nonStarters.sort((a, b) => (before(a, b) ? -1 : before(b, a) ? 1 : 0));
const cccRank = new Map();
let rank = 0, prev = -1;
for (const c of nonStarters) {
  if (prev < 0 || before(prev, c)) rank++;
  cccRank.set(c, rank);
  prev = c;
}
if (rank > 255) throw new Error('too many combining classes');

const decomp = []; // [cp, [decomposition]]
const compositions = []; // [a, b, composite]
for (let c = 0; c <= MAX; c++) {
  if (isSurrogate(c) || isHangulSyllable(c)) continue;
  const s = chr(c);
  const d = s.normalize('NFD');
  if (d === s) continue;
  decomp.push([c, cps(d)]);
  if (s.normalize('NFC') !== s) continue; // excluded from composition (or a singleton)
  const dc = cps(d);
  if (dc.length < 2) continue;
  const prefix = String.fromCodePoint(...dc.slice(0, -1)).normalize('NFC');
  const pc = cps(prefix);
  if (pc.length !== 1) throw new Error(`cannot split composite U+${c.toString(16)}`);
  compositions.push([pc[0], dc[dc.length - 1], c]);
}
compositions.sort((x, y) => x[0] - y[0] || x[1] - y[1]);

// --- self-check: the C algorithm, in JS, against normalize('NFC') ------------------------------
const decompMap = new Map(decomp.map(([c, d]) => [c, d]));
const compMap = new Map(compositions.map(([a, b, c]) => [a * 0x200000 + b, c]));
const ccc = (c) => cccRank.get(c) || 0;
function nfc(text) {
  const d = [];
  for (const c of cps(text)) {
    if (isHangulSyllable(c)) {
      const i = c - HANGUL_S;
      d.push(0x1100 + Math.floor(i / 588), 0x1161 + Math.floor((i % 588) / 28));
      if (i % 28) d.push(0x11a7 + (i % 28));
    } else d.push(...(decompMap.get(c) || [c]));
  }
  for (let i = 1; i < d.length; i++) { // stable insertion sort of non-starter runs
    const cc = ccc(d[i]);
    if (!cc) continue;
    let j = i;
    while (j > 0 && ccc(d[j - 1]) > cc) { [d[j - 1], d[j]] = [d[j], d[j - 1]]; j--; }
  }
  const out = [];
  let starter = -1, lastCcc = 0;
  for (const c of d) {
    const cc = ccc(c);
    if (starter >= 0 && (lastCcc < cc || (lastCcc === 0 && out.length - 1 === starter))) {
      const a = out[starter];
      let comp;
      if (a >= 0x1100 && a < 0x1113 && c >= 0x1161 && c < 0x1176)
        comp = HANGUL_S + ((a - 0x1100) * 21 + (c - 0x1161)) * 28;
      else if (isHangulSyllable(a) && (a - HANGUL_S) % 28 === 0 && c > 0x11a7 && c < 0x11c3)
        comp = a + (c - 0x11a7);
      else comp = compMap.get(a * 0x200000 + c);
      if (comp !== undefined) { out[starter] = comp; continue; }
    }
    if (cc === 0) { starter = out.length; lastCcc = 0; } else lastCcc = cc;
    out.push(c);
  }
  return String.fromCodePoint(...out);
}
let checked = 0;
const check = (s) => {
  checked++;
  if (nfc(s) !== s.normalize('NFC'))
    throw new Error(`NFC self-check failed for ${JSON.stringify(s)}: ${cps(nfc(s))} vs ${cps(s.normalize('NFC'))}`);
};
for (let c = 0; c <= MAX; c++) if (!isSurrogate(c)) check(chr(c));
const marks = nonStarters.filter((_, i) => i % 7 === 0);
const bases = [0x41, 0x61, 0x45, 0x4f, 0x55, 0x73, 0x3b1, 0x3c9, 0x439, 0x915, 0x1100, 0xac00, 0xac01,
  0x1e63, 0x5d0, 0x627, 0x1b05, 0x11099, 0x1133b];
for (const b of bases) for (const m1 of marks) {
  check(chr(b) + chr(m1));
  for (const m2 of [0x301, 0x323, 0x308, 0x334, 0x5b4, 0x93c, 0x1161, 0x11a8, 0x1134d])
    check(chr(b) + chr(m1) + chr(m2));
}
for (const [a, b] of compositions) { check(chr(a) + chr(b)); check(chr(a) + '\u0323' + chr(b)); }

// --- output -----------------------------------------------------------------------------------
const hex = (c) => '0x' + c.toString(16).toUpperCase().padStart(4, '0');
const lines = [];
const p = (s) => lines.push(s);
const emitRanges = (name, rs) => {
  p(`const unicode_range ${name}[] = {`);
  for (let i = 0; i < rs.length; i += 4)
    p('    ' + rs.slice(i, i + 4).map(([a, b]) => `{${hex(a)}, ${hex(b)}}`).join(', ') + ',');
  p('};');
  p(`const size_t ${name}_count = ${rs.length};`);
  p('');
};
p('/* unicode_tables.c: GENERATED by tests/tools/gen_unicode_tables.js from node ' + process.version +
  ` (Unicode ${process.versions.unicode}); do not edit.`);
p(' * Regenerate: node tests/tools/gen_unicode_tables.js > inference/unicode_tables.c */');
p('#include "unicode_tables.h"');
p('');
emitRanges('unicode_letter_ranges', letter);
emitRanges('unicode_number_ranges', number);
emitRanges('unicode_space_ranges', space);
p('const unicode_ccc_entry unicode_ccc_table[] = {');
const cccList = [...cccRank.entries()].sort((a, b) => a[0] - b[0]);
for (let i = 0; i < cccList.length; i += 6)
  p('    ' + cccList.slice(i, i + 6).map(([c, r]) => `{${hex(c)}, ${r}}`).join(', ') + ',');
p('};');
p(`const size_t unicode_ccc_table_count = ${cccList.length};`);
p('');
const pool = [];
const entries = [];
for (const [c, d] of decomp) { entries.push([c, pool.length, d.length]); pool.push(...d); }
p('const uint32_t unicode_decomposition_pool[] = {');
for (let i = 0; i < pool.length; i += 10) p('    ' + pool.slice(i, i + 10).map(hex).join(', ') + ',');
p('};');
p('const unicode_decomposition unicode_decomposition_table[] = {');
for (let i = 0; i < entries.length; i += 4)
  p('    ' + entries.slice(i, i + 4).map(([c, o, n]) => `{${hex(c)}, ${o}, ${n}}`).join(', ') + ',');
p('};');
p(`const size_t unicode_decomposition_table_count = ${entries.length};`);
p('');
p('const unicode_composition unicode_composition_table[] = {');
for (let i = 0; i < compositions.length; i += 4)
  p('    ' + compositions.slice(i, i + 4).map(([a, b, c]) => `{${hex(a)}, ${hex(b)}, ${hex(c)}}`).join(', ') + ',');
p('};');
p(`const size_t unicode_composition_table_count = ${compositions.length};`);
process.stdout.write(lines.join('\n') + '\n');
process.stderr.write(`letters ${letter.length} ranges, numbers ${number.length}, spaces ${space.length}, ` +
  `non-starters ${nonStarters.length} in ${rank} classes, decompositions ${decomp.length}, ` +
  `compositions ${compositions.length}; NFC self-check passed on ${checked} strings\n`);
