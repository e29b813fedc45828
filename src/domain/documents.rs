//! The invoice of a confirmed order, and its rendering as a one-page PDF (A4, the standard
//! Helvetica font, so the file needs no embedded font and any reader shows it).
//!
//! Prices include VAT: the grand total is what the customer was charged, and the invoice shows
//! the VAT it contains at the configured rate.

use chrono::{DateTime, Utc};
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

use super::envelope::PricedLine;
use super::money::Currency;

/// Everything an invoice shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub order_id: uuid::Uuid,
    pub customer_id: String,
    pub issued_at: DateTime<Utc>,
    pub seller: String,
    pub currency: Currency,
    pub lines: Vec<PricedLine>,
    /// What the customer was charged (VAT included).
    pub total_minor: i64,
    /// The VAT rate the prices include, in percent.
    pub vat_percent: u32,
}

impl Invoice {
    pub fn line_total(line: &PricedLine) -> i64 {
        line.unit_price_minor
            .saturating_mul(i64::from(line.quantity))
    }

    /// The VAT contained in the grand total, rounded half up to the minor unit.
    pub fn vat_minor(&self) -> i64 {
        let rate = i128::from(self.vat_percent);
        let total = i128::from(self.total_minor);
        let vat = (total * rate * 2 + (100 + rate)) / ((100 + rate) * 2);
        i64::try_from(vat).unwrap_or(i64::MAX)
    }

    pub fn money(&self, minor: i64) -> String {
        money(self.currency, minor)
    }

    /// The invoice number printed on the document: derived from the order id, so rendering
    /// the same order twice gives the same number.
    pub fn number(&self) -> String {
        format!("INV-{}", self.order_id.simple())
    }

    /// The text lines of the document, top to bottom, each with its font size and indent.
    fn text(&self) -> Vec<(f32, f32, String)> {
        let mut out = vec![
            (18.0, 0.0, format!("Invoice {}", self.number())),
            (11.0, 0.0, format!("Seller: {}", self.seller)),
            (11.0, 0.0, format!("Customer: {}", self.customer_id)),
            (11.0, 0.0, format!("Order: {}", self.order_id)),
            (
                11.0,
                0.0,
                format!("Date: {}", self.issued_at.format("%Y-%m-%d")),
            ),
            (11.0, 0.0, String::new()),
            (
                11.0,
                0.0,
                "SKU | Product | Quantity | Unit price | Line total".into(),
            ),
        ];
        for line in &self.lines {
            out.push((
                11.0,
                0.0,
                format!(
                    "{} | {} | {} | {} | {}",
                    line.sku,
                    line.name,
                    line.quantity,
                    self.money(line.unit_price_minor),
                    self.money(Self::line_total(line))
                ),
            ));
        }
        out.push((11.0, 0.0, String::new()));
        out.push((
            11.0,
            0.0,
            format!(
                "Net: {}",
                self.money(self.total_minor.saturating_sub(self.vat_minor()))
            ),
        ));
        out.push((
            11.0,
            0.0,
            format!(
                "VAT {}% (included): {}",
                self.vat_percent,
                self.money(self.vat_minor())
            ),
        ));
        out.push((
            13.0,
            0.0,
            format!("Grand total: {}", self.money(self.total_minor)),
        ));
        out
    }

    /// The invoice as PDF bytes.
    pub fn render_pdf(&self) -> Vec<u8> {
        render_page(&format!("Invoice {}", self.number()), &self.text())
    }
}

/// The receipt of an order's card payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub order_id: uuid::Uuid,
    pub issued_at: DateTime<Utc>,
    pub seller: String,
    pub currency: Currency,
    pub amount_minor: i64,
    /// The card network's reference of the payment.
    pub provider_ref: String,
}

impl Receipt {
    pub fn number(&self) -> String {
        format!("RCT-{}", self.order_id.simple())
    }

    fn text(&self) -> Vec<(f32, f32, String)> {
        vec![
            (18.0, 0.0, format!("Receipt {}", self.number())),
            (11.0, 0.0, format!("Seller: {}", self.seller)),
            (11.0, 0.0, format!("Order: {}", self.order_id)),
            (
                11.0,
                0.0,
                format!("Date: {}", self.issued_at.format("%Y-%m-%d %H:%M UTC")),
            ),
            (11.0, 0.0, String::new()),
            (11.0, 0.0, "Paid by card".into()),
            (
                11.0,
                0.0,
                format!("Payment reference: {}", self.provider_ref),
            ),
            (
                13.0,
                0.0,
                format!("Amount paid: {}", money(self.currency, self.amount_minor)),
            ),
        ]
    }

    /// The receipt as PDF bytes.
    pub fn render_pdf(&self) -> Vec<u8> {
        render_page(&format!("Receipt {}", self.number()), &self.text())
    }
}

/// `12.34 EUR` for 1234 minor units of a currency with two minor digits.
pub fn money(currency: Currency, minor: i64) -> String {
    let digits = u32::from(currency.minor_digits());
    let code = currency.code();
    if digits == 0 {
        return format!("{minor} {code}");
    }
    let scale = 10_u64.pow(digits);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!(
        "{sign}{}.{:0width$} {code}",
        abs / scale,
        abs % scale,
        width = digits as usize
    )
}

/// One A4 page showing `lines` (font size, indent, text) top to bottom, titled `title`.
fn render_page(title: &str, lines: &[(f32, f32, String)]) -> Vec<u8> {
    let catalog = Ref::new(1);
    let pages = Ref::new(2);
    let page = Ref::new(3);
    let font = Ref::new(4);
    let contents = Ref::new(5);
    let info = Ref::new(6);
    let font_name = Name(b"F1");

    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(pages);
    pdf.pages(pages).kids([page]).count(1);
    let mut p = pdf.page(page);
    p.media_box(Rect::new(0.0, 0.0, 595.0, 842.0));
    p.parent(pages);
    p.contents(contents);
    p.resources().fonts().pair(font_name, font);
    p.finish();
    pdf.type1_font(font)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.document_info(info)
        .title(TextStr(title))
        .producer(TextStr("orderflow"));

    let mut content = Content::new();
    let mut y = 790.0;
    for (size, indent, line) in lines {
        content.begin_text();
        content.set_font(font_name, *size);
        content.next_line(50.0 + indent, y);
        content.show(Str(&latin1(line)));
        content.end_text();
        y -= size + 8.0;
    }
    pdf.stream(contents, &content.finish());
    pdf.finish()
}

/// The bytes of `text` in the font's encoding; characters it cannot show become `?`.
fn latin1(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match u32::from(c) {
            0x20..=0x7e => c as u8,
            _ => b'?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoice(total_minor: i64, vat_percent: u32) -> Invoice {
        Invoice {
            order_id: uuid::Uuid::nil(),
            customer_id: "c-1".into(),
            issued_at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            seller: "Orderflow Demo Shop".into(),
            currency: Currency::parse("EUR").unwrap_or_else(|| unreachable!()),
            lines: vec![PricedLine {
                sku: "BOOK".into(),
                name: "Book".into(),
                quantity: 2,
                unit_price_minor: 1_250,
            }],
            total_minor,
            vat_percent,
        }
    }

    #[test]
    fn vat_is_the_share_the_grand_total_includes_rounded_half_up() {
        assert_eq!(invoice(12_000, 20).vat_minor(), 2_000);
        assert_eq!(invoice(2_500, 20).vat_minor(), 417); // 416.67
        assert_eq!(invoice(2_500, 0).vat_minor(), 0);
    }

    #[test]
    fn money_uses_the_currency_minor_digits() {
        let i = invoice(0, 0);
        assert_eq!(i.money(2_500), "25.00 EUR");
        assert_eq!(i.money(5), "0.05 EUR");
        assert_eq!(i.money(-150), "-1.50 EUR");
    }

    #[test]
    fn a_receipt_shows_the_amount_and_the_payment_reference() {
        let r = Receipt {
            order_id: uuid::Uuid::nil(),
            issued_at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            seller: "Shop".into(),
            currency: Currency::parse("EUR").unwrap_or_else(|| unreachable!()),
            amount_minor: 6_490,
            provider_ref: "ch_1".into(),
        };
        let text = String::from_utf8_lossy(&r.render_pdf()).into_owned();
        assert!(text.contains("Amount paid: 64.90 EUR"), "{text}");
        assert!(text.contains("Payment reference: ch_1"), "{text}");
    }

    #[test]
    fn the_pdf_is_a_pdf_and_names_the_order() {
        let bytes = invoice(2_500, 20).render_pdf();
        assert!(bytes.starts_with(b"%PDF-"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("Grand total: 25.00 EUR"), "{text}");
        assert!(text.contains("00000000-0000-0000-0000-000000000000"));
    }
}
