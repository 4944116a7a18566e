"""The Experts tab: the registered experts, adding one (check -> train in a child process -> refit) and removing one.

After a training child registers its expert, `service.refresh()` loads it and refits the gate, so the
running server routes to it at once.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from app import views
from app.api import expert_infos
from app.config import AppConfig
from app.service import ExpertGate
from app.training import Progress, TrainingError, TrainingRunner, TrainRequest
from experts.registry import RegistryError
from experts.train import TrainConfig

READ_ONLY_NOTE = "This server is read-only: adding and removing experts is turned off."
PASTED = "pasted examples"


def _whole(value) -> int | None:
    """An optional whole number from a gr.Number, 0 or empty meaning unset; TrainingError for anything else."""
    if value is None or value == "" or value == 0:
        return None
    if float(value) != int(value):
        raise TrainingError(f"expected a whole number, got {value}")
    return int(value)


def _request(folder: Path, name, description, upload, pasted, rank, epochs, max_steps) -> TrainRequest:
    """The upload, or the pasted lines written into `folder`, as a TrainRequest; TrainingError if neither."""
    if upload and (pasted or "").strip():
        raise TrainingError("give either a file or pasted examples, not both")
    if upload:
        data, shown = Path(upload), Path(upload).name
    elif (pasted or "").strip():
        data, shown = folder / "pasted.jsonl", PASTED
        data.write_text(pasted, encoding="utf-8")
    else:
        raise TrainingError("upload a JSONL file or paste examples, one JSON object per line")
    return TrainRequest(name=(name or "").strip(), description=(description or "").strip(), data=data,
                        shown_as=shown, rank=_whole(rank), epochs=_whole(epochs), max_steps=_whole(max_steps))


def experts_tab(service: ExpertGate, config: AppConfig, tab: gr.Tab, warnings: gr.HTML, *, read_only: bool) -> None:
    """`warnings` is the page's box for disabled experts: adding one may disable it."""
    runner = TrainingRunner(config)

    def current_table():
        return views.experts_table(expert_infos(service.registry), service.backend.experts(),
                                   service.stats.snapshot())

    table = gr.Dataframe(current_table(), label="Registered experts", interactive=False, elem_id="experts-table")
    refresh = gr.Button("Refresh", size="sm")
    if read_only:
        gr.HTML(views.note_box(READ_ONLY_NOTE), elem_id="read-only-note")
    with gr.Accordion("Add expert", open=True, visible=not read_only, elem_id="add-expert"):
        with gr.Row():
            name = gr.Textbox(label="Name", placeholder="astronomy", max_lines=1, elem_id="new-name")
            description = gr.Textbox(label="Description", placeholder="stars, planets and telescopes", max_lines=1,
                                     elem_id="new-description")
        with gr.Row():
            upload = gr.File(label="Training pairs (JSONL: question/answer, prompt/completion or chat messages)",
                             file_types=[".jsonl", ".json", ".txt"], type="filepath", elem_id="new-file")
            pasted = gr.Textbox(label="...or paste JSONL lines", lines=5, elem_id="new-pasted",
                                placeholder='{"question": "...", "answer": "..."}')
        with gr.Row():
            rank = gr.Number(TrainConfig.rank, label="LoRA rank", precision=0, minimum=1, elem_id="new-rank")
            epochs = gr.Number(TrainConfig.epochs, label="Epochs", precision=0, minimum=1, elem_id="new-epochs")
            max_steps = gr.Number(0, label="Max steps (0: no limit)", precision=0, minimum=0,
                                  elem_id="new-max-steps")
        train = gr.Button("Train and add expert", variant="primary", elem_id="train-button")
        status = gr.HTML(elem_id="train-status")
        progress = gr.HTML(elem_id="train-progress")
        loss = gr.LinePlot(views.loss_frame([]), x="step", y="loss", label="Training loss", height=220,
                           elem_id="train-loss")
    with gr.Accordion("Remove expert", open=False, visible=not read_only, elem_id="remove-expert"):
        with gr.Row():
            chosen = gr.Dropdown(service.registry.names(), label="Expert", elem_id="remove-name")
            remove = gr.Button("Remove...", variant="secondary", elem_id="remove-button")
        with gr.Row(visible=False) as confirm_row:
            confirm_text = gr.Markdown()
            confirm = gr.Button("Yes, remove it", variant="stop", elem_id="remove-confirm")
            cancel = gr.Button("Cancel", elem_id="remove-cancel")
        remove_status = gr.HTML(elem_id="remove-status")

    def listing():
        return (current_table(), gr.Dropdown(choices=service.registry.names(), value=None),
                views.warnings_box(service.warnings))

    def on_train(*inputs):
        if read_only:
            yield {status: views.error_box(READ_ONLY_NOTE)}
            return
        points: list[tuple[int, float]] = []
        with tempfile.TemporaryDirectory(prefix="expertgate-upload-") as folder:
            try:
                request = _request(Path(folder), *inputs)
                yield {status: views.note_box(f"Checked the data; starting to train {request.name!r}..."),
                       progress: views.progress_bar(0, 1, None), loss: views.loss_frame([])}
                for event in runner.run(request):
                    if isinstance(event, Progress):
                        points.append((event.step, event.loss))
                        yield {progress: views.progress_bar(event.step, event.total, event.loss),
                               loss: views.loss_frame(points)}
            except TrainingError as err:
                yield {status: views.error_box(str(err)), progress: ""}
                return
        yield {status: views.note_box("Trained and registered; loading it and refitting the gate...")}
        service.refresh()
        yield {status: views.note_box(f"Expert {request.name!r} is ready: questions now route to it."),
               **dict(zip((table, chosen, warnings), listing()))}

    def on_remove(expert):
        if read_only or not expert:
            return gr.Row(visible=False), "", views.error_box(READ_ONLY_NOTE if read_only else "choose an expert first")
        return gr.Row(visible=True), f"Remove expert **{expert}** and delete its folder?", ""

    def on_confirm(expert):
        if read_only:
            return gr.Row(visible=False), views.error_box(READ_ONLY_NOTE), *listing()
        try:
            service.remove_expert(expert)
        except RegistryError as err:
            return gr.Row(visible=False), views.error_box(str(err)), *listing()
        return gr.Row(visible=False), views.note_box(f"Removed expert {expert!r}."), *listing()

    hidden = dict(api_visibility="private")
    train.click(on_train, [name, description, upload, pasted, rank, epochs, max_steps],
                [status, progress, loss, table, chosen, warnings], concurrency_limit=1, **hidden)
    remove.click(on_remove, chosen, [confirm_row, confirm_text, remove_status], **hidden)
    cancel.click(lambda: gr.Row(visible=False), None, confirm_row, **hidden)
    confirm.click(on_confirm, chosen, [confirm_row, remove_status, table, chosen, warnings], **hidden)
    gr.on([tab.select, refresh.click], listing, None, [table, chosen, warnings], **hidden)
