"""docs/your-own-model.md: the stand-in for "trained elsewhere". Plain PyTorch, no camdrift:
a torchvision DenseNet121 with a 5-class head, its backbone frozen for two epochs (TL), then
trained in full for two (FT); TL saved by ``torch.save(state_dict)``, FT as a Lightning-style
``.ckpt`` (``state_dict`` with ``model.`` prefixes). Run it inside the folder holding
``images/`` (the five class folders)."""

import torch
import torchvision
from torchvision import datasets, transforms

torch.manual_seed(0)
tf = transforms.Compose(
    [
        transforms.Grayscale(3),
        transforms.Resize((64, 64)),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
)
data = datasets.ImageFolder("images", tf)  # the five class folders
loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
net = torchvision.models.densenet121(num_classes=5)


def fit(params, epochs, lr):
    opt = torch.optim.Adam(params, lr=lr)
    net.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()


fit(net.classifier.parameters(), 2, 1e-2)
torch.save(net.state_dict(), "densenet121-tl.pth")
fit(net.parameters(), 2, 1e-3)
torch.save(
    {"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, "densenet121-ft.ckpt"
)
print("classes", data.classes)
