//! `GET /` (and `HEAD`): the web page, for people. One HTML document (`page/index.html`) with
//! its stylesheet and script inlined, all compiled into the binary and put together once. The
//! `Content-Security-Policy` allows exactly those two inline blocks (by their SHA-256) and calls
//! to this origin only, so nothing is ever loaded from elsewhere.

use std::sync::LazyLock;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use sha2::{Digest, Sha256};

use super::{Call, Response, empty_reply, reply};
use crate::domain::etag;

const TEMPLATE: &str = include_str!("page/index.html");
const STYLE: &str = include_str!("page/page.css");
const SCRIPT: &str = include_str!("page/page.js");
const STYLE_SLOT: &str = "{{style}}";
const SCRIPT_SLOT: &str = "{{script}}";

struct Page {
    html: Bytes,
    etag: HeaderValue,
    csp: HeaderValue,
}

static PAGE: LazyLock<Page> = LazyLock::new(Page::build);

impl Page {
    fn build() -> Page {
        let html = TEMPLATE
            .replacen(STYLE_SLOT, STYLE, 1)
            .replacen(SCRIPT_SLOT, SCRIPT, 1);
        let tag = etag(html.as_bytes());
        Page {
            // Quotes and hex digits, and base64 and ASCII: both always make header values.
            etag: HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"\"")),
            csp: HeaderValue::from_str(&policy(STYLE, SCRIPT))
                .unwrap_or(HeaderValue::from_static("default-src 'none'")),
            html: Bytes::from(html),
        }
    }
}

/// The page's policy: nothing by default; its own inline style and script (by hash, so an
/// injected one never runs); `fetch` to this origin only; no framing, no `<base>`, no form
/// posted anywhere (the script handles every form).
fn policy(style: &str, script: &str) -> String {
    format!(
        "default-src 'none'; style-src 'sha256-{}'; script-src 'sha256-{}'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
        base64(&Sha256::digest(style)),
        base64(&Sha256::digest(script)),
    )
}

/// The web page
///
/// One HTML page for people: issue a number, look one up or check it, upload a CSV import and
/// follow it to its results, see recent imports. Its style and script are inline, and it calls
/// this API from the browser. The page needs no API key; the calls it makes do when keys are on.
#[utoipa::path(
    trace, path = "",
    params(("If-None-Match" = Option<String>, Header,
            description = "The `ETag` of a copy the caller holds")),
    responses(
        (status = 200, description = "The page", body = String,
         content_type = "text/html; charset=utf-8",
         headers(
            ("ETag" = String, description = "The strong tag of this build's page"),
            ("Content-Security-Policy" = String, description = "Only the page's own inline style \
                and script run, and it calls this origin only"),
         )),
        (status = 304, description = "The caller's copy (`If-None-Match`) is this build's page",
         headers(("ETag" = String, description = "The strong tag of this build's page"))),
    )
)]
pub async fn serve(call: Call) -> Response {
    let page = &*PAGE;
    let held = call
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| none_match_holds(value, page.etag.to_str().unwrap_or("")));
    let mut response = if held {
        empty_reply(StatusCode::NOT_MODIFIED)
    } else {
        reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page.html.clone(),
        )
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, page.etag.clone());
    // Kept, but asked about every time: a new build's page is never hidden by an old one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, page.csp.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Whether an `If-None-Match` value names the version tagged `etag`: `*`, or a list holding it,
/// weak or strong (RFC 9110 §13.1.2 compares weakly).
fn none_match_holds(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|tag| {
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag == "*" || tag == etag
    })
}

/// Standard base64 with padding (RFC 4648 §4), as CSP hash sources are written.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (at, &byte)| n | u32::from(byte) << (16 - 8 * at));
        for at in 0..4 {
            if at <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * at)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::INPUT_NAMES;

    fn html() -> &'static str {
        std::str::from_utf8(&PAGE.html).unwrap()
    }

    /// The text between `open` and the next `close`, for each `open` in `text`.
    fn between<'t>(text: &'t str, open: &str, close: &str) -> Vec<&'t str> {
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find(open) {
            let after = &rest[start + open.len()..];
            let end = after.find(close).expect("closed");
            found.push(&after[..end]);
            rest = &after[end..];
        }
        found
    }

    fn attribute<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
        between(text, &format!(" {name}=\""), "\"")
    }

    fn the_form<'t>(text: &'t str, id: &str) -> &'t str {
        let start = text.find(&format!("<form id=\"{id}\"")).expect("the form");
        let end = text[start..].find("</form>").expect("its end");
        &text[start..start + end]
    }

    #[test]
    fn base64_is_rfc_4648() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xfb, 0xff, 0xbf], "+/+/"),
        ] {
            assert_eq!(base64(bytes), text, "{bytes:?}");
        }
        assert_eq!(
            base64(&Sha256::digest(b"")),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_style_and_script() {
        let (styles, scripts) = (
            between(html(), "<style>", "</style>"),
            between(html(), "<script>", "</script>"),
        );
        assert_eq!((styles.len(), scripts.len()), (1, 1));
        assert_eq!((styles[0], scripts[0]), (STYLE, SCRIPT));
        assert!(!html().contains(STYLE_SLOT) && !html().contains(SCRIPT_SLOT));
        let csp = PAGE.csp.to_str().unwrap();
        let hash = |text: &str| format!("'sha256-{}'", base64(&Sha256::digest(text)));
        assert!(
            csp.contains(&format!("style-src {};", hash(styles[0]))),
            "{csp}"
        );
        assert!(
            csp.contains(&format!("script-src {};", hash(scripts[0]))),
            "{csp}"
        );
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
        assert!(csp.contains("connect-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        // A style attribute would be refused by the policy.
        assert!(!html().contains(" style="));
    }

    #[test]
    fn nothing_is_loaded_from_elsewhere() {
        for link in attribute(html(), "src")
            .into_iter()
            .chain(attribute(html(), "href"))
        {
            let local = (link.starts_with('/') && !link.starts_with("//"))
                || link.starts_with('#')
                || link.starts_with("data:");
            assert!(local, "{link}");
        }
        assert!(!STYLE.contains("@import") && !STYLE.contains("url("));
        for text in [html(), SCRIPT] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }

    #[test]
    fn ids_are_unique_and_every_reference_names_one() {
        let mut ids = attribute(html(), "id");
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "an id given twice");
        let references = attribute(html(), "for")
            .into_iter()
            .chain(attribute(html(), "aria-labelledby"))
            .chain(
                attribute(html(), "aria-describedby")
                    .into_iter()
                    .flat_map(str::split_whitespace),
            );
        for reference in references {
            assert!(ids.binary_search(&reference).is_ok(), "{reference}");
        }
    }

    /// The script shows a field's error in the element `<input id>-error`, which the input must
    /// name in `aria-describedby`; and every input has a label.
    #[test]
    fn every_input_has_a_label_and_an_error_slot_it_is_described_by() {
        let inputs = between(html(), "<input", ">");
        let selects = between(html(), "<select", ">");
        assert!(inputs.len() > 10 && !selects.is_empty());
        for input in inputs.into_iter().chain(selects) {
            let id = attribute(input, "id");
            assert_eq!(id.len(), 1, "{input}");
            let described = attribute(input, "aria-describedby");
            let slot = format!("{}-error", id[0]);
            assert!(
                described
                    .iter()
                    .any(|d| d.split_whitespace().any(|d| d == slot)),
                "{input}"
            );
            assert!(html().contains(&format!("for=\"{}\"", id[0])), "{input}");
        }
    }

    #[test]
    fn each_form_has_an_input_for_each_parameter_of_its_call() {
        let names = attribute(the_form(html(), "issue-form"), "name");
        assert_eq!(names, INPUT_NAMES);
        let names = attribute(the_form(html(), "lookup-form"), "name");
        assert_eq!(names, ["tracking_number"]);
        // The upload's parameters: a 400 naming one is shown beside it.
        let names = attribute(the_form(html(), "import-form"), "name");
        assert_eq!(names, ["file", "delimiter", "dry_run"]);
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists_and_star() {
        let tag = "\"abc\"";
        for header in ["\"abc\"", "W/\"abc\"", "\"x\", \"abc\"", "*"] {
            assert!(none_match_holds(header, tag), "{header}");
        }
        for header in ["\"abd\"", "abc", "\"x\", W/\"y\"", ""] {
            assert!(!none_match_holds(header, tag), "{header}");
        }
    }
}
