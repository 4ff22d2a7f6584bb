"""`--format text`: one line per row, tab-separated columns; backslashes, newlines, carriage
returns and tabs inside a value are escaped, every other character (spaces included) kept."""
from pengi_kit.cli import _Writer


def test_text_format_escapes_and_keeps_everything_else(tmp_path):
    out = tmp_path / "r.txt"
    writer = _Writer("text", out, ["audio", "text"])
    writer.write({"audio": "a b.wav", "text": " two  lines\nwith\ta tab, a \\n and\r<|endoftext|> "})
    writer.write({"audio": "c.wav", "text": ""})
    writer.close()
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines == ["a b.wav\t two  lines\\nwith\\ta tab, a \\\\n and\\r<|endoftext|> ", "c.wav\t", ""]
    unescaped = lines[0].split("\t")[1].replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t") \
        .replace("\\r", "\r").replace("\0", "\\")
    assert unescaped == " two  lines\nwith\ta tab, a \\n and\r<|endoftext|> "  # nothing lost
