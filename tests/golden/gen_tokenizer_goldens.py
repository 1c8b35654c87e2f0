#!/usr/bin/env python3
"""Regenerates every tokenizer and chat-template golden file under
tests/golden/tokenizer/. The C tests read only the outputs; they never run Python.

Needs: transformers, tokenizers, sentencepiece, gguf (pip), and for the SmolLM2
goldens the model $PROTEUS_DEFAULT_MODEL (default
~/.cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf).

Outputs (all small):
  spm_bpe.model / spm_bpe.tokenizer.json / spm_bpe.gguf
      a SentencePiece BPE (vocab 2000, byte_fallback) trained here on a generated
      multilingual corpus, converted to a Hugging Face LlamaTokenizerFast, and the
      same vocab as a vocab-only GGUF (tokenizer.ggml.model = "llama").
  bl_<pre>.tokenizer.json / bl_<pre>.gguf
      a byte-level BPE (vocab 2000) trained here with `tokenizers`, with the
      pre-tokenizer of SmolLM2 (smollm), GPT-2 (gpt2), Llama 3 (llama-bpe) and
      Qwen2 (qwen2); the GGUFs carry tokenizer.ggml.pre = <pre>.
  enc_<name>.json   {"cases": [{"text": ..., "ids": [...]}, ...]} per tokenizer
  chat_<kind>.json  {"template": ..., "bos": ..., "eos": ..., "cases": [{"messages": [...], "text": ...}]}
"""
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tokenizer")
CORPUS = os.path.join(HERE, "tokenizer_corpus.json")
MODEL = os.environ.get("PROTEUS_DEFAULT_MODEL",
                       os.path.expanduser("~/.cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf"))

# Published pre-tokenizer patterns (GPT-2, Llama 3, Qwen2).
RE_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
RE_LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
RE_QWEN2 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def training_text(seed=1234, n=6000):
    """A generated multilingual corpus for training the small vocabularies."""
    rng = random.Random(seed)
    words = {
        "en": "the quick brown fox jumps over lazy dog hello world model token server inference "
              "language learning attention memory cache batch stream request response it's don't "
              "we're they've I'm you'll she'd The Hello World".split(),
        "fr": "le la les une été déjà garçon français où château forêt naïve".split(),
        "de": "Straße über schön Mädchen größer Fußball".split(),
        "ru": "привет мир модель язык токен сервер быстро".split(),
        "el": "γειά σου κόσμε μοντέλο γλώσσα".split(),
        "ar": "مرحبا بالعالم نموذج لغة".split(),
        "hi": "नमस्ते दुनिया भाषा मॉडल".split(),
        "zh": "你好 世界 模型 语言 服务器 推理".split(),
        "ja": "こんにちは 世界 東京 カタカナ".split(),
        "th": "สวัสดี ชาวโลก ภาษา".split(),
        "code": "def return if else for while int main() {} [] == != += -> :: /* */ // #include".split(),
    }
    # Pseudo-words from syllables give the trainer enough distinct pieces.
    syl = "ka ri to na me shi ver lan tor ing tion pre con de ma po lu sa bre xi qua zo".split()
    words["syn"] = ["".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    langs = list(words)
    lines = []
    for _ in range(n):
        lang = rng.choice(langs)
        k = rng.randint(3, 12)
        ws = [rng.choice(words[lang]) for _ in range(k)]
        if rng.random() < 0.3:
            ws.insert(rng.randint(0, len(ws)), str(rng.randint(0, 100000)))
        if rng.random() < 0.2:
            ws.append(rng.choice([".", ",", "!", "?", "...", ":", ";"]))
        lines.append(" ".join(ws))
    return "\n".join(lines) + "\n"


def corpus_cases():
    """Hard cases for tokenizers; written to tokenizer_corpus.json."""
    c = [
        "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\t\t\n  \n\t",
        "Hello world", " Hello world", "Hello  world", "Hello   world  ", "hello\tworld\n",
        "trailing spaces   ", "   leading spaces", "a\n\n\nb", "a \n b", "line1\r\nline2\r\n",
        "x    \n    y", "tabs\t\t\tand  spaces \t \t mixed",
        "1", "12", "123", "1234", "12345", "123456789012345678901234567890",
        "3.14159 2,718 1e10 -42 +7 0x1F 1_000_000", "version 1.2.3-beta4", "year2024 and 2025年",
        "٣٤٥ ١٢٣ and ५६७ digits", "½ ¼ ² ³ Ⅻ",
        "!!!", "?!?!", "...", "--- *** ###", "Hello, world! How are you?", "(a+b)*c=[d]{e}",
        "foo.bar(baz);", "a->b::c", "\"quoted\" 'single'", "<html><body>x</body></html>",
        "email@example.com https://example.org/path?q=1&r=2#frag",
        "it's", "don't", "we're", "they've", "I'm", "you'll", "she'd", "IT'S", "DON'T", "We'RE",
        "I'M", "YOU'LL", "SHE'D", "'s 't 're 've 'm 'll 'd", "rock'n'roll", "o'clock", "''", "'",
        "the dog's bone", "James' book",
        "你好世界", "我爱自然语言处理。", "東京タワーに行きました", "한국어 텍스트", "中文English混合",
        "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇫🇷", "I ❤️ NY", "👩🏾‍💻 coding",
        "مرحبا بالعالم", "नमस्ते दुनिया", "Привет, мир!", "Γειά σου Κόσμε", "สวัสดีชาวโลก",
        "שלום עולם", "Ελληνικά και English και Русский",
        "café naïve résumé", "Straße größer", "e\u0301 combining", "n\u0303 a\u0308 o\u0302",
        "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dalgo",
        "ﬁ ligature", "Ｆｕｌｌｗｉｄｔｈ", "\u00a0nbsp\u00a0", "zero\u200bwidth", "\u3000ideographic space",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>\n",
        "text<|endoftext|>more", "<|im_start|><|im_end|>", "< |im_start| >", "<|im_start", "<s>", "</s>",
        "<unk>", "a<s>b</s>c",
        "a" * 300, "ab" * 200, "supercalifragilisticexpialidocious" * 5, " " * 100, "\n" * 50,
        "Antidisestablishmentarianism", "pneumonoultramicroscopicsilicovolcanoconiosis",
        "def main():\n    return 0\n", "int main(void) {\n\treturn 0;\n}\n",
        "    indented code\n        more", "```python\nprint('hi')\n```",
        "Mixed 123abc456 def789", "x1y2z3", "A1B22C333D4444",
    ]
    # Generated mixes: random picks from a fixed alphabet of troublesome pieces.
    rng = random.Random(7)
    parts = ["the", " ", "  ", "\n", "\t", "123", "4567", "'s", "'LL", "!", "?!", "你好", "😀", "👍🏽",
             "é", "e\u0301", "Привет", "مرحبا", "नमस्ते", "ไทย", "<|im_end|>", ".", ",", "\r\n", "ß"]
    for _ in range(60):
        c.append("".join(rng.choice(parts) for _ in range(rng.randint(1, 20))))
    return c


def write_json(name, obj):
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=0)
        f.write("\n")


def enc_golden(name, encode, cases, note=None):
    out = {"cases": [{"text": t, "ids": list(encode(t))} for t in cases]}
    if note:
        out["note"] = note
    write_json("enc_%s.json" % name, out)


# ---------------------------------------------------------------- SentencePiece BPE
def build_spm(text_path, cases):
    import sentencepiece as spm
    prefix = os.path.join(OUT, "spm_bpe")
    spm.SentencePieceTrainer.train(
        input=text_path, model_prefix=prefix, model_type="bpe", vocab_size=2000,
        byte_fallback=True, character_coverage=0.995, add_dummy_prefix=True,
        split_digits=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2, num_threads=2,
        user_defined_symbols=[], hard_vocab_limit=False)
    os.remove(prefix + ".vocab")
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")

    # transformers 5's LlamaConverter cannot be driven without a slow
    # tokenizer class any more, so this builds what it builds for legacy Llama
    # (the classic Llama 2 tokenizer.json) from its own pieces: merges from
    # transformers' generate_merges ordered by piece score, Prepend + Replace
    # normalizer, no pre-tokenizer, ByteFallback decoder.
    from transformers.convert_slow_tokenizer import generate_merges
    from tokenizers import Tokenizer as HFTok, models, normalizers, decoders, AddedToken
    vocab_scores = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab_scores[0] = ("<unk>", 0.0)
    vocab_scores[1] = ("<s>", 0.0)
    vocab_scores[2] = ("</s>", 0.0)
    bpe_vocab = {w: i for i, (w, _) in enumerate(vocab_scores)}
    merges = generate_merges(bpe_vocab, vocab_scores)
    fast = HFTok(models.BPE(bpe_vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    fast.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                            normalizers.Replace(" ", "\u2581")])
    fast.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                      decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    fast.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    fast.save(prefix + ".tokenizer.json")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(prefix + ".tokenizer.json")
    enc_golden("spm_bpe", lambda t: tok.encode(t, add_special_tokens=False).ids, cases,
               note="transformers LlamaConverter(spm_bpe.model), legacy=True, add_special_tokens=False")
    # Also record the slow SentencePiece answer, for information (HF's fast
    # tokenizer splits <s> </s> out of text; sentencepiece does not).
    write_json("enc_spm_bpe_sentencepiece.json",
               {"cases": [{"text": t, "ids": sp.encode(t)} for t in cases]})

    import gguf
    w = gguf.GGUFWriter(prefix + ".gguf", "llama")
    toks, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        toks.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # Not needed by the C tests: they use the .tokenizer.json and the .gguf.
    os.remove(prefix + ".model")


# ---------------------------------------------------------------- byte-level BPE
def build_byte_level(text_path, cases):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, Regex
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train([text_path], trainer)
    base = json.loads(tok.to_str())
    variants = {
        "smollm": base["pre_tokenizer"],
        "gpt2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "llama-bpe": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": RE_LLAMA3}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "qwen2": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": RE_QWEN2}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
    }
    import gguf
    vocab = base["model"]["vocab"]
    id2tok = [None] * len(vocab)
    for s, i in vocab.items():
        id2tok[i] = s
    merges = [m if isinstance(m, str) else " ".join(m) for m in base["model"]["merges"]]
    for pre, pt in variants.items():
        j = dict(base)
        j["pre_tokenizer"] = pt
        path = os.path.join(OUT, "bl_%s.tokenizer.json" % pre)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
        t = Tokenizer.from_file(path)
        enc_golden("bl_" + pre, lambda s: t.encode(s, add_special_tokens=False).ids, cases,
                   note="tokenizers.Tokenizer.from_file(bl_%s.tokenizer.json)" % pre)
        w = gguf.GGUFWriter(os.path.join(OUT, "bl_%s.gguf" % pre), "llama")
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(id2tok)
        w.add_token_types([gguf.TokenType.CONTROL if s in SPECIALS else gguf.TokenType.NORMAL
                           for s in id2tok])
        w.add_token_merges(merges)
        w.add_bos_token_id(vocab["<|im_start|>"])
        w.add_eos_token_id(vocab["<|im_end|>"])
        w.add_add_bos_token(False)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


# ---------------------------------------------------------------- SmolLM2 (GGUF)
def build_smollm2(cases):
    if not os.path.exists(MODEL):
        print("skipping SmolLM2 goldens: %s absent" % MODEL)
        return None
    from transformers import AutoTokenizer
    from tokenizers import pre_tokenizers
    tok = AutoTokenizer.from_pretrained(os.path.dirname(MODEL), gguf_file=os.path.basename(MODEL))
    conv = [tok.encode(t, add_special_tokens=False) for t in cases]
    # transformers' GGUF conversion gives a plain ByteLevel pre-tokenizer; the
    # real SmolLM2 tokenizer.json (and llama.cpp's "smollm" pre) first isolates
    # every digit. Goldens use the real pre-tokenizer; differences are recorded.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    real = [tok.encode(t, add_special_tokens=False) for t in cases]
    diffs = [cases[i] for i in range(len(cases)) if conv[i] != real[i]]
    note = ("AutoTokenizer(gguf_file) with pre_tokenizer set to SmolLM2's "
            "Sequence[Digits(individual_digits), ByteLevel]; the unpatched GGUF conversion "
            "(ByteLevel only) differs on %d of %d cases" % (len(diffs), len(cases)))
    print(note)
    out = {"note": note, "conversion_differs_on": diffs,
           "cases": [{"text": cases[i], "ids": real[i]} for i in range(len(cases))],
           "decode": [{"ids": real[i], "text": tok.decode(real[i])} for i in range(len(cases))]}
    write_json("enc_smollm2.json", out)
    return tok


# ---------------------------------------------------------------- chat templates
TEMPLATE_LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
                   "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
                   "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
                   "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
TEMPLATE_LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
                   "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
                   "{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if "
                   "(message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation "
                   "roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == "
                   "0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
                   "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] "
                   "%}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() "
                   "+ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + "
                   "eos_token }}{% endif %}{% endfor %}")
TEMPLATE_MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
                    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
                    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ "
                    "'[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
                    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
                    "roles are supported!') }}{% endif %}{% endfor %}")

CONVS_SYS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Tell me a joke.\n"}],
    [{"role": "user", "content": "  spaced  \n"}, {"role": "assistant", "content": " ok "},
     {"role": "user", "content": "multi\nline\ttext 你好 😀"}],
]
CONVS_NOSYS = [c for c in CONVS_SYS if c[0]["role"] != "system"]


def build_chat(tok):
    from transformers import AutoTokenizer
    if tok is None:
        return
    smol = tok.chat_template
    jobs = [("chatml", smol, "<|im_start|>", "<|im_end|>", CONVS_SYS),
            ("llama3", TEMPLATE_LLAMA3, "<|begin_of_text|>", "<|eot_id|>", CONVS_SYS),
            ("llama2", TEMPLATE_LLAMA2, "<s>", "</s>", CONVS_SYS),
            ("mistral", TEMPLATE_MISTRAL, "<s>", "</s>", CONVS_NOSYS)]
    for kind, tmpl, bos, eos, convs in jobs:
        cases = []
        for m in convs:
            text = tok.apply_chat_template(m, chat_template=tmpl, tokenize=False,
                                           add_generation_prompt=True, bos_token=bos, eos_token=eos)
            cases.append({"messages": m, "text": text})
        write_json("chat_%s.json" % kind, {"template": tmpl, "bos": bos, "eos": eos, "cases": cases})


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = corpus_cases()
    with open(CORPUS, "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)
        f.write("\n")
    text_path = "/tmp/proteus_tok_train.txt"
    with open(text_path, "w", encoding="utf-8") as f:
        f.write(training_text())
    build_spm(text_path, cases)
    build_byte_level(text_path, cases)
    tok = build_smollm2(cases)
    build_chat(tok)
    print("wrote goldens for %d corpus cases to %s" % (len(cases), OUT))


if __name__ == "__main__":
    sys.exit(main())
