//! The page as a list of blocks, written once as self-contained HTML and once as Markdown, so
//! the two always hold the same tables and charts.

use std::fmt::Write as _;

use base64::Engine as _;

/// One piece of the page.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Heading(u8, String),
    Para(String),
    /// A box at the top of the page: red (`alarm`) or green, a title and its items.
    Flag {
        alarm: bool,
        title: String,
        items: Vec<String>,
    },
    /// A list of plain notes (e.g. what is missing), under a bold title.
    Notes {
        title: String,
        items: Vec<String>,
    },
    Table(Table),
    /// Collapsed in HTML (`<details>`), a sub-heading and its blocks in Markdown.
    Details {
        summary: String,
        blocks: Vec<Block>,
    },
    Chart(ChartBlock),
    /// A chart that could not be drawn, and why.
    Skipped {
        title: String,
        reason: String,
    },
    /// Preformatted text (config files, raw JSON).
    Pre(String),
    /// Term: meaning, one per line.
    Glossary(Vec<(String, String)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Right-align these columns (numbers).
    pub numeric: Vec<bool>,
}

impl Table {
    pub fn new(header: &[&str], rows: Vec<Vec<String>>) -> Self {
        let numeric = (0..header.len())
            .map(|c| {
                let cells: Vec<&String> = rows.iter().filter_map(|r| r.get(c)).filter(|s| !s.is_empty() && s.as_str() != DASH).collect();
                !cells.is_empty() && cells.iter().all(|s| s.starts_with(|ch: char| ch.is_ascii_digit() || matches!(ch, '-' | '+' | '[')))
            })
            .collect();
        Self { header: header.iter().map(|s| s.to_string()).collect(), rows, numeric }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChartBlock {
    pub title: String,
    pub caption: String,
    /// Relative to the page: `charts/<stem>.png`.
    pub png_rel: String,
    pub svg_rel: String,
    pub png_bytes: Vec<u8>,
}

/// What an absent value prints as.
pub const DASH: &str = "–";

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Table cells: long configuration labels (`a=1,b=2,...`) may break after their commas.
fn esc_cell(s: &str) -> String {
    let e = esc(s);
    let mut o = String::with_capacity(e.len());
    let mut chars = e.chars().peekable();
    while let Some(c) = chars.next() {
        o.push(c);
        if c == ',' && chars.peek().is_some_and(|n| !n.is_whitespace()) {
            o.push_str("<wbr>");
        }
    }
    o
}

const CSS: &str = r#"
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; font-size: 16px; line-height: 1.45; color: #111; margin: 0 auto; padding: 16px 24px 48px; max-width: 1240px; }
h1 { font-size: 28px; margin: 8px 0 12px; } h2 { font-size: 23px; margin-top: 36px; border-bottom: 1px solid #ccc; padding-bottom: 4px; } h3 { font-size: 19px; margin-top: 24px; }
.flag { border: 3px solid; border-radius: 6px; padding: 10px 16px; margin: 8px 0 16px; }
.flag.alarm { border-color: #c00; background: #fde8e8; } .flag.alarm .t { color: #a00; font-size: 20px; font-weight: bold; }
.flag.ok { border-color: #2a7; background: #e9f7ef; } .flag.ok .t { color: #175; font-weight: bold; }
.notes { border-left: 5px solid #d90; background: #fff7e0; padding: 8px 16px; margin: 12px 0; }
.scroll { overflow-x: auto; margin: 10px 0; }
table { border-collapse: collapse; font-size: 15px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }
th { background: #f0f2f5; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 20px 0 28px; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 15px; color: #333; max-width: 1000px; }
.skipped { color: #555; font-style: italic; }
pre { background: #f6f8fa; border: 1px solid #ddd; padding: 10px; overflow-x: auto; font-size: 14px; }
dl.gloss dt { font-weight: bold; float: left; clear: left; width: 210px; } dl.gloss dd { margin: 0 0 4px 220px; }
details { margin: 8px 0; } summary { cursor: pointer; font-weight: bold; }
"#;

/// Checks on load that every chart image decoded, and records it on <body> as
/// `data-images-ok="N/M"` (read by the headless-browser test; a failure is also a console error).
const IMAGE_CHECK: &str = r#"
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } else { console.error('chart image did not load: ' + imgs[i].alt); }
  }
  document.body.setAttribute('data-images-ok', ok + '/' + imgs.length);
});
"#;

/// A complete HTML page: CSS, charts (base64 PNG) and the one script inline; nothing is fetched.
pub fn html(title: &str, blocks: &[Block]) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{CSS}</style>\n<script>{IMAGE_CHECK}</script>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    for b in blocks {
        html_block(&mut o, b);
    }
    o.push_str("</body>\n</html>\n");
    o
}

fn html_block(o: &mut String, b: &Block) {
    match b {
        Block::Heading(level, text) => {
            let l = (*level).clamp(2, 4);
            let _ = writeln!(o, "<h{l} id=\"{}\">{}</h{l}>", anchor(text), esc(text));
        }
        Block::Para(t) => {
            let _ = writeln!(o, "<p>{}</p>", esc(t));
        }
        Block::Flag { alarm, title, items } => {
            let _ = write!(o, "<div class=\"flag {}\"><div class=\"t\">{}</div>", if *alarm { "alarm" } else { "ok" }, esc(title));
            if !items.is_empty() {
                o.push_str("<ul>");
                for i in items {
                    let _ = write!(o, "<li>{}</li>", esc(i));
                }
                o.push_str("</ul>");
            }
            o.push_str("</div>\n");
        }
        Block::Notes { title, items } => {
            let _ = write!(o, "<div class=\"notes\"><strong>{}</strong><ul>", esc(title));
            for i in items {
                let _ = write!(o, "<li>{}</li>", esc(i));
            }
            o.push_str("</ul></div>\n");
        }
        Block::Table(t) => {
            o.push_str("<div class=\"scroll\"><table>\n<thead><tr>");
            for h in &t.header {
                let _ = write!(o, "<th>{}</th>", esc(h));
            }
            o.push_str("</tr></thead>\n<tbody>\n");
            for r in &t.rows {
                o.push_str("<tr>");
                for (c, cell) in r.iter().enumerate() {
                    let class = if t.numeric.get(c).copied().unwrap_or(false) { " class=\"n\"" } else { "" };
                    let _ = write!(o, "<td{class}>{}</td>", esc_cell(cell));
                }
                o.push_str("</tr>\n");
            }
            o.push_str("</tbody></table></div>\n");
        }
        Block::Details { summary, blocks } => {
            let _ = writeln!(o, "<details><summary>{}</summary>", esc(summary));
            for b in blocks {
                html_block(o, b);
            }
            o.push_str("</details>\n");
        }
        Block::Chart(c) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&c.png_bytes);
            let _ = writeln!(
                o,
                "<figure><img src=\"data:image/png;base64,{b64}\" alt=\"{}\" width=\"1000\"><figcaption><strong>{}.</strong> {} <span class=\"files\">(files: {}, {})</span></figcaption></figure>",
                esc(&c.title),
                esc(&c.title),
                esc(&c.caption),
                esc(&c.png_rel),
                esc(&c.svg_rel)
            );
        }
        Block::Skipped { title, reason } => {
            let _ = writeln!(o, "<p class=\"skipped\"><strong>{}</strong>: not drawn: {}.</p>", esc(title), esc(reason));
        }
        Block::Pre(t) => {
            let _ = writeln!(o, "<pre>{}</pre>", esc(t));
        }
        Block::Glossary(items) => {
            o.push_str("<dl class=\"gloss\">\n");
            for (term, meaning) in items {
                let _ = writeln!(o, "<dt>{}</dt><dd>{}</dd>", esc(term), esc(meaning));
            }
            o.push_str("</dl>\n");
        }
    }
}

fn anchor(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// The same blocks as Markdown (GitHub flavour: pipe tables; charts link `charts/*.png`).
pub fn markdown(title: &str, blocks: &[Block]) -> String {
    let mut o = format!("# {title}\n\n");
    for b in blocks {
        md_block(&mut o, b, 0);
    }
    o
}

fn md_cell(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|").replace('\n', " ")
}

fn md_block(o: &mut String, b: &Block, depth: u8) {
    match b {
        Block::Heading(level, text) => {
            let l = (*level + depth).clamp(2, 6) as usize;
            let _ = writeln!(o, "{} {text}\n", "#".repeat(l));
        }
        Block::Para(t) => {
            let _ = writeln!(o, "{t}\n");
        }
        Block::Flag { alarm, title, items } => {
            let mark = if *alarm { "🚨 **" } else { "✅ **" };
            let _ = writeln!(o, "> {mark}{title}**");
            for i in items {
                let _ = writeln!(o, "> - {i}");
            }
            o.push('\n');
        }
        Block::Notes { title, items } => {
            let _ = writeln!(o, "**{title}**\n");
            for i in items {
                let _ = writeln!(o, "- {i}");
            }
            o.push('\n');
        }
        Block::Table(t) => {
            let _ = writeln!(o, "| {} |", t.header.iter().map(|h| md_cell(h)).collect::<Vec<_>>().join(" | "));
            let _ = writeln!(
                o,
                "|{}|",
                (0..t.header.len())
                    .map(|c| if t.numeric.get(c).copied().unwrap_or(false) { " ---: " } else { " --- " })
                    .collect::<Vec<_>>()
                    .join("|")
            );
            for r in &t.rows {
                let _ = writeln!(o, "| {} |", r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | "));
            }
            o.push('\n');
        }
        Block::Details { summary, blocks } => {
            let l = (4 + depth).min(6) as usize;
            let _ = writeln!(o, "{} {summary}\n", "#".repeat(l));
            for b in blocks {
                md_block(o, b, depth + 1);
            }
        }
        Block::Chart(c) => {
            let _ = writeln!(o, "![{}]({})\n\n*{}.* {} ([SVG]({}))\n", c.title, c.png_rel, c.title, c.caption, c.svg_rel);
        }
        Block::Skipped { title, reason } => {
            let _ = writeln!(o, "*{title}*: not drawn: {reason}.\n");
        }
        Block::Pre(t) => {
            let fence = if t.contains("```") { "~~~~" } else { "```" };
            let _ = writeln!(o, "{fence}text\n{}\n{fence}\n", t.trim_end());
        }
        Block::Glossary(items) => {
            for (term, meaning) in items {
                let _ = writeln!(o, "- **{term}**: {meaning}");
            }
            o.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_pipes() {
        let blocks = vec![Block::Table(Table::new(&["a|b", "n"], vec![vec!["<x>".into(), "1.50".into()]]))];
        let h = html("t", &blocks);
        assert!(h.contains("&lt;x&gt;") && h.contains("<td class=\"n\">1.50</td>"));
        let m = markdown("t", &blocks);
        assert!(m.contains("a\\|b") && m.contains("| <x> | 1.50 |") && m.contains("---:"));
    }
}
