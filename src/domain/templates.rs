//! The customer notifications: one template per customer-visible event, each rendering a
//! subject, a plain-text body and an HTML body. Values are HTML-escaped in the HTML body.

use uuid::Uuid;

/// What a notification is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    OrderConfirmed { total: String },
    OrderCancelled { reason: String },
    InvoiceReady { link: String },
}

impl Notice {
    /// The template's stable name (stored in the notification log).
    pub fn template(&self) -> &'static str {
        match self {
            Notice::OrderConfirmed { .. } => "order_confirmed",
            Notice::OrderCancelled { .. } => "order_cancelled",
            Notice::InvoiceReady { .. } => "invoice_ready",
        }
    }
}

/// A rendered notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Renders `notice` about `order_id` for `seller`'s customer.
pub fn render(seller: &str, order_id: Uuid, notice: &Notice) -> Rendered {
    let short = order_id.simple().to_string();
    let short = &short[short.len() - 8..];
    let (subject, lines): (String, Vec<String>) = match notice {
        Notice::OrderConfirmed { total } => (
            format!("Your order {short} is confirmed"),
            vec![
                format!("Thank you for your order {order_id}."),
                format!("We have reserved your items and charged {total}."),
                "Your invoice follows in a separate mail.".into(),
            ],
        ),
        Notice::OrderCancelled { reason } => (
            format!("Your order {short} was cancelled"),
            vec![
                format!("Your order {order_id} was cancelled: {}.", describe(reason)),
                "Nothing was charged, or the charge was refunded.".into(),
            ],
        ),
        Notice::InvoiceReady { link } => (
            format!("Your invoice for order {short}"),
            vec![
                format!("The invoice for your order {order_id} is ready."),
                format!("Download it here: {link}"),
            ],
        ),
    };
    let text = format!("{}\n\n-- \n{seller}\n", lines.join("\n"));
    let body: String = lines
        .iter()
        .map(|l| format!("<p>{}</p>", escape(l)))
        .collect();
    let html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body>{body}<p>&mdash; {}</p></body></html>",
        escape(&subject),
        escape(seller)
    );
    Rendered {
        subject,
        text,
        html,
    }
}

/// A customer-readable cancellation reason.
fn describe(reason: &str) -> String {
    match reason.split(':').next().unwrap_or(reason) {
        "customer_cancelled" => "you cancelled it".into(),
        "stock_rejected" => "some items are not available".into(),
        "payment_declined" => "the payment was declined".into(),
        "payment_timeout" | "stock_timeout" => "it could not be completed in time".into(),
        other => other.replace('_', " "),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_template_has_subject_text_and_escaped_html() {
        let id = Uuid::nil();
        let r = render(
            "Shop <&>",
            id,
            &Notice::OrderConfirmed {
                total: "64.90 EUR".into(),
            },
        );
        assert_eq!(r.subject, "Your order 00000000 is confirmed");
        assert!(r.text.contains("charged 64.90 EUR"));
        assert!(r.html.contains("Shop &lt;&amp;&gt;"), "{}", r.html);
        let c = render(
            "Shop",
            id,
            &Notice::OrderCancelled {
                reason: "payment_declined: card_declined".into(),
            },
        );
        assert!(c.text.contains("the payment was declined"), "{}", c.text);
        let i = render(
            "Shop",
            id,
            &Notice::InvoiceReady {
                link: "http://x/v1/orders/1/invoice?a=1&b=2".into(),
            },
        );
        assert!(i.html.contains("a=1&amp;b=2"));
        assert_eq!(i.subject, "Your invoice for order 00000000");
    }
}
