//! The report's HTML: its markdown sections as headings, tables and paragraphs.

pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;")
}

pub(crate) fn html_table(md: &str) -> String {
    let mut out = String::from("<table>\n");
    for (i, line) in md.lines().enumerate().filter(|(i, _)| *i != 1) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let tag = if i == 0 { "th" } else { "td" };
        out.push_str("<tr>");
        for c in cells {
            out.push_str(&format!("<{tag}>{}</{tag}>", html_escape(c)));
        }
        out.push_str("</tr>\n");
    }
    out + "</table>\n"
}

/// Markdown sections (`### title`, tables, paragraphs) as HTML.
pub(crate) fn html_sections(md: &str) -> String {
    let mut body = String::new();
    for section in md.split("\n### ").skip(1) {
        let (title, rest) = section.split_once("\n\n").unwrap_or((section, ""));
        body.push_str(&format!("<h2>{}</h2>\n", html_escape(title)));
        let mut table = String::new();
        for line in rest.lines() {
            if line.starts_with('|') {
                table.push_str(line);
                table.push('\n');
                continue;
            }
            if !table.is_empty() {
                body.push_str(&html_table(table.trim()));
                table.clear();
            }
            if !line.trim().is_empty() {
                body.push_str(&format!("<p>{}</p>\n", html_escape(line)));
            }
        }
        if !table.is_empty() {
            body.push_str(&html_table(table.trim()));
        }
    }
    body
}
