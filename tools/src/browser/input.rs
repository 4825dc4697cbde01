//! Input as a person gives it: the mouse moved to an element's centre (scrolled into view
//! first) and clicked, keys pressed as chords, text typed or filled in, files chosen, drags.

use std::time::Duration;

use serde_json::Value;

use super::cdp::Cdp;
use super::keys::{self, Chord};
use super::page::{Page, cdp_error};
use super::protocol as p;
use crate::{Error, Result};

/// A mouse button by playwright-mcp's name.
pub fn button(name: Option<&str>) -> Result<&'static str> {
    match name.unwrap_or("left") {
        "left" => Ok("left"),
        "right" => Ok("right"),
        "middle" => Ok("middle"),
        other => Err(Error::InvalidArgument(format!(
            "unknown button '{other}': use left, right or middle"
        ))),
    }
}

fn button_bit(button: &str) -> u32 {
    match button {
        "right" => 2,
        "middle" => 4,
        _ => 1,
    }
}

/// Modifier names (`Alt`, `Control`, `ControlOrMeta`, `Meta`, `Shift`) as CDP's bit mask.
pub fn modifiers(names: &[String]) -> Result<u32> {
    names.iter().try_fold(0, |acc, m| {
        let bit = match m.as_str() {
            "Alt" => keys::ALT,
            "Control" => keys::CONTROL,
            "Meta" | "ControlOrMeta" => keys::META,
            "Shift" => keys::SHIFT,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown modifier '{other}': use Alt, Control, ControlOrMeta, Meta or Shift"
                )));
            }
        };
        Ok(acc | bit)
    })
}

/// The element's centre in viewport coordinates, scrolled into view first. A node that the
/// page has removed is reported as a ref no longer in the page.
pub async fn center(cdp: &Cdp, page: &Page, node: i64, target: &str) -> Result<(f64, f64)> {
    let s = page.session();
    let gone = |_| {
        Error::InvalidArgument(format!(
            "Ref {target} not found in the current page snapshot. Try capturing new snapshot."
        ))
    };
    cdp.call(
        s,
        &p::ScrollIntoViewIfNeeded {
            backend_node_id: node,
        },
    )
    .await
    .map_err(gone)?;
    let quads = cdp
        .call(
            s,
            &p::GetContentQuads {
                backend_node_id: node,
            },
        )
        .await
        .map_err(gone)?;
    let quad = quads
        .quads
        .into_iter()
        .find(|q| q.len() == 8)
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "element {target} is not visible (it has no box on the page)"
            ))
        })?;
    let x = (quad[0] + quad[2] + quad[4] + quad[6]) / 4.0;
    let y = (quad[1] + quad[3] + quad[5] + quad[7]) / 4.0;
    Ok((x, y))
}

pub async fn mouse_move(cdp: &Cdp, page: &Page, x: f64, y: f64) -> Result<()> {
    let buttons = page.state.lock().buttons;
    let held = match buttons {
        0 => None,
        b if b & 1 != 0 => Some("left"),
        b if b & 2 != 0 => Some("right"),
        _ => Some("middle"),
    };
    cdp.call(
        page.session(),
        &p::DispatchMouseEvent {
            kind: "mouseMoved",
            x,
            y,
            button: held,
            buttons: Some(buttons),
            ..Default::default()
        },
    )
    .await
    .map_err(cdp_error)?;
    page.state.lock().mouse = (x, y);
    Ok(())
}

/// Presses (`down`) or releases a button where the mouse is.
pub async fn mouse_button(
    cdp: &Cdp,
    page: &Page,
    button: &'static str,
    down: bool,
    click_count: u32,
    modifiers: u32,
) -> Result<()> {
    let (x, y, buttons) = {
        let mut st = page.state.lock();
        if down {
            st.buttons |= button_bit(button);
        } else {
            st.buttons &= !button_bit(button);
        }
        (st.mouse.0, st.mouse.1, st.buttons)
    };
    let event = p::DispatchMouseEvent {
        kind: if down {
            "mousePressed"
        } else {
            "mouseReleased"
        },
        x,
        y,
        button: Some(button),
        buttons: Some(buttons),
        click_count: Some(click_count),
        modifiers: Some(modifiers),
        ..Default::default()
    };
    page.unless_dialog(cdp.call(page.session(), &event)).await
}

/// Clicks (twice for a double click) at `(x, y)`.
pub async fn click_at(
    cdp: &Cdp,
    page: &Page,
    (x, y): (f64, f64),
    button: &'static str,
    clicks: u32,
    modifiers: u32,
) -> Result<()> {
    mouse_move(cdp, page, x, y).await?;
    for n in 1..=clicks.max(1) {
        mouse_button(cdp, page, button, true, n, modifiers).await?;
        mouse_button(cdp, page, button, false, n, modifiers).await?;
    }
    Ok(())
}

pub async fn wheel(cdp: &Cdp, page: &Page, dx: f64, dy: f64) -> Result<()> {
    let (x, y) = page.state.lock().mouse;
    cdp.call(
        page.session(),
        &p::DispatchMouseEvent {
            kind: "mouseWheel",
            x,
            y,
            delta_x: Some(dx),
            delta_y: Some(dy),
            ..Default::default()
        },
    )
    .await
    .map_err(cdp_error)?;
    Ok(())
}

/// A drag from one point to another: mouse down, moves, mouse up, and when the page starts an
/// HTML drag (intercepted), the drag events at the drop point.
pub async fn drag(cdp: &Cdp, page: &Page, from: (f64, f64), to: (f64, f64)) -> Result<()> {
    page.state.lock().drag = None;
    // Only for the drag's moves, as Playwright does: left on, an interception that misses
    // its drop leaves the browser waiting in a drag.
    cdp.call(page.session(), &p::SetInterceptDrags { enabled: true })
        .await
        .map_err(cdp_error)?;
    let moved = drag_moves(cdp, page, from, to).await;
    let _ = cdp
        .call(page.session(), &p::SetInterceptDrags { enabled: false })
        .await;
    let data = moved?;
    if let Some(data) = data {
        for kind in ["dragEnter", "dragOver", "drop"] {
            cdp.call(
                page.session(),
                &p::DispatchDragEvent {
                    kind,
                    x: to.0,
                    y: to.1,
                    data: data.clone(),
                },
            )
            .await
            .map_err(cdp_error)?;
        }
    }
    mouse_button(cdp, page, "left", false, 1, 0).await
}

/// Presses at `from` and moves to `to`; the drag data when the page started an HTML drag.
async fn drag_moves(
    cdp: &Cdp,
    page: &Page,
    from: (f64, f64),
    to: (f64, f64),
) -> Result<Option<Value>> {
    mouse_move(cdp, page, from.0, from.1).await?;
    mouse_button(cdp, page, "left", true, 1, 0).await?;
    for step in 1..=5 {
        let t = f64::from(step) / 5.0;
        mouse_move(
            cdp,
            page,
            from.0 + (to.0 - from.0) * t,
            from.1 + (to.1 - from.1) * t,
        )
        .await?;
    }
    // The page's dragstart is reported as an event of its own after the moves: a round trip
    // through the page makes sure its handlers ran, then the event has a moment to arrive.
    // Missing it would leave the browser in a drag that swallows every later mouse event.
    let _ = cdp
        .call(
            page.session(),
            &p::Evaluate {
                expression: "0".into(),
                await_promise: false,
                return_by_value: true,
            },
        )
        .await;
    page.wait_until(Duration::from_millis(500), |st| st.drag.is_some())
        .await;
    Ok(page.state.lock().drag.take())
}

/// Presses a chord: modifiers down, the key down and up, modifiers up.
pub async fn press(cdp: &Cdp, page: &Page, chord: &Chord) -> Result<()> {
    let s = page.session();
    let event = |kind: &'static str, k: &keys::Key, text: Option<String>| p::DispatchKeyEvent {
        kind,
        key: k.key.clone(),
        code: k.code.clone(),
        windows_virtual_key_code: k.key_code,
        text,
        modifiers: chord.modifiers,
    };
    for m in &chord.modifier_keys {
        cdp.call(s, &event("rawKeyDown", m, None))
            .await
            .map_err(cdp_error)?;
    }
    let down = if chord.key.text.is_some() {
        "keyDown"
    } else {
        "rawKeyDown"
    };
    page.unless_dialog(cdp.call(s, &event(down, &chord.key, chord.key.text.clone())))
        .await?;
    page.unless_dialog(cdp.call(s, &event("keyUp", &chord.key, None)))
        .await?;
    for m in chord.modifier_keys.iter().rev() {
        cdp.call(s, &event("keyUp", m, None))
            .await
            .map_err(cdp_error)?;
    }
    Ok(())
}

/// Runs `function` (a JS function's source) with the element as `this`, arguments by value;
/// the result by value.
pub async fn call_on(
    cdp: &Cdp,
    page: &Page,
    node: i64,
    function: &str,
    args: Vec<Value>,
) -> Result<Option<Value>> {
    let s = page.session();
    let object = cdp
        .call(
            s,
            &p::ResolveNode {
                backend_node_id: node,
            },
        )
        .await
        .map_err(cdp_error)?
        .object
        .object_id
        .ok_or_else(|| Error::internal("the element has no object"))?;
    let done = cdp
        .call(
            s,
            &p::CallFunctionOn {
                function_declaration: function.into(),
                object_id: object,
                arguments: args
                    .into_iter()
                    .map(|value| p::CallArgument { value })
                    .collect(),
                await_promise: true,
                return_by_value: true,
            },
        )
        .await
        .map_err(cdp_error)?;
    if let Some(ex) = done.exception_details {
        return Err(Error::InvalidArgument(format!(
            "the page threw: {}",
            exception_text(&ex)
        )));
    }
    Ok(done.result.value)
}

pub fn exception_text(ex: &Value) -> String {
    ex["exception"]["description"]
        .as_str()
        .or(ex["text"].as_str())
        .unwrap_or("exception")
        .to_string()
}

/// Replaces an editable element's content with `text`, as a person selecting all and typing
/// it would (input events fire; the page's handlers see one insertion).
pub async fn fill(cdp: &Cdp, page: &Page, node: i64, text: &str) -> Result<()> {
    let editable = call_on(
        cdp,
        page,
        node,
        "function() { \
           this.focus(); \
           if (this instanceof HTMLInputElement || this instanceof HTMLTextAreaElement) { \
             if (this.readOnly || this.disabled) return 'not editable'; \
             this.select(); return 'ok'; } \
           if (this.isContentEditable) { \
             const r = document.createRange(); r.selectNodeContents(this); \
             const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(r); \
             return 'ok'; } \
           return 'not editable'; }",
        vec![],
    )
    .await?;
    if editable.as_ref().and_then(Value::as_str) != Some("ok") {
        return Err(Error::InvalidArgument(
            "the element is not an editable text field".into(),
        ));
    }
    if text.is_empty() {
        let del = keys::chord("Delete")?;
        return press(cdp, page, &del).await;
    }
    cdp.call(page.session(), &p::InsertText { text: text.into() })
        .await
        .map_err(cdp_error)?;
    Ok(())
}

/// Types `text` one key at a time into the focused element.
pub async fn type_slowly(cdp: &Cdp, page: &Page, text: &str) -> Result<()> {
    for c in text.chars() {
        match keys::chord(&c.to_string()) {
            Ok(chord) if !chord.key.code.is_empty() => press(cdp, page, &chord).await?,
            _ => {
                cdp.call(
                    page.session(),
                    &p::InsertText {
                        text: c.to_string(),
                    },
                )
                .await
                .map_err(cdp_error)?;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Selects the options of a `<select>` whose value or label is among `values`.
pub async fn select_options(cdp: &Cdp, page: &Page, node: i64, values: &[String]) -> Result<()> {
    let found = call_on(
        cdp,
        page,
        node,
        "function(values) { \
           if (!(this instanceof HTMLSelectElement)) return -1; \
           let n = 0; \
           for (const o of this.options) { \
             const hit = values.includes(o.value) || values.includes(o.label); \
             if (hit) n++; \
             if (this.multiple || hit) o.selected = hit; } \
           this.dispatchEvent(new Event('input', {bubbles: true})); \
           this.dispatchEvent(new Event('change', {bubbles: true})); \
           return n; }",
        vec![Value::from(values.to_vec())],
    )
    .await?;
    match found.and_then(|v| v.as_i64()) {
        Some(-1) => Err(Error::InvalidArgument(
            "the element is not a <select> (a combobox to pick options from)".into(),
        )),
        Some(0) => Err(Error::InvalidArgument(format!(
            "no option of the select has the value or label {values:?}"
        ))),
        _ => Ok(()),
    }
}

/// Whether a checkbox or radio is checked.
pub async fn is_checked(cdp: &Cdp, page: &Page, node: i64) -> Result<bool> {
    let v = call_on(
        cdp,
        page,
        node,
        "function() { return this.checked === undefined \
           ? this.getAttribute('aria-checked') === 'true' : this.checked; }",
        vec![],
    )
    .await?;
    Ok(v.and_then(|v| v.as_bool()).unwrap_or(false))
}

/// Sets a range input's value, with the events a person's drag gives.
pub async fn set_range(cdp: &Cdp, page: &Page, node: i64, value: &str) -> Result<()> {
    call_on(
        cdp,
        page,
        node,
        "function(v) { this.focus(); this.value = v; \
           this.dispatchEvent(new Event('input', {bubbles: true})); \
           this.dispatchEvent(new Event('change', {bubbles: true})); }",
        vec![Value::from(value)],
    )
    .await?;
    Ok(())
}
